# pragma version ~=0.4.3
"""
@title grinding challenger (tests only)
@license GNU Affero General Public License v3.0 or later
@notice An attacker's contract for the stateful fuzz harness (tests/contracts/fuzz): it
        opens disputes and audits, appeals and calls `draw`, and reverts unless its sybil
        is the one picked, so that a failed try costs only gas (issue 11, revert-grinding).
        It also tries `draw` in the opening transaction itself. Against the court's
        request-then-draw selection no pick exists when an opening returns, and a draw's
        outcome is fixed by the hash of the request's block, so reverting buys nothing.
        Never deploy it anywhere but a test chain.
"""

from ethereum.ercs import IERC20

from ..interfaces import ICourt
from ..interfaces import IMarket

PH_ASSIGNED: constant(uint8) = 1
PH_APPEALED: constant(uint8) = 4

market: public(immutable(IMarket))
court: public(immutable(ICourt))
owner: public(immutable(address))

# what the last `peek_dispute` saw right after opening: phase, verifier, whether a `draw`
# in the same transaction succeeded
seen_phase: public(uint8)
seen_verifier: public(address)
seen_draw_ok: public(bool)


@deploy
def __init__(market_: address, court_: address, token_: address):
    """
    @notice Deploys the attacker's contract; fund it with tokens, then call `deposit`.
    @param market_ The market.
    @param court_ The court.
    @param token_ The market's token.
    """
    market = IMarket(market_)
    court = ICourt(court_)
    owner = msg.sender
    extcall IERC20(token_).approve(market_, max_value(uint256), default_return_value=True)


@external
def deposit(amount: uint256):
    """
    @notice Moves `amount` of the contract's tokens into its prepaid market balance.
    @param amount The amount.
    """
    assert msg.sender == owner, "grinder: not the owner"
    extcall market.deposit(amount)


@external
def withdraw_deposit(amount: uint256):
    """
    @notice Takes `amount` of the prepaid market balance back into the contract.
    @param amount The amount.
    """
    assert msg.sender == owner, "grinder: not the owner"
    extcall market.withdraw_deposit(amount)


@external
def withdraw_to(recipient: address):
    """
    @notice Sends the contract's market credits to `recipient`.
    @param recipient Where the tokens go.
    """
    assert msg.sender == owner, "grinder: not the owner"
    extcall market.withdraw_to(recipient)


@external
def grind_dispute(job_id: uint256, job: IMarket.Job, sybil: address):
    """
    @notice Disputes, tries to draw at once, and reverts unless `sybil` is the verifier.
    @param job_id The job id.
    @param job The job's fields.
    @param sybil The attacker's verifier.
    """
    assert msg.sender == owner, "grinder: not the owner"
    extcall court.dispute(job_id, job)
    self._try_draw(job_id)
    assert (staticcall court.dispute_info(job_id)).verifier == sybil, "grinder: sybil not picked"


@external
def grind_audit(job_id: uint256, job: IMarket.Job, sybil: address):
    """
    @notice Starts an audit, tries to draw at once, and reverts unless `sybil` verifies.
    @param job_id The job id.
    @param job The job's fields.
    @param sybil The attacker's verifier.
    """
    assert msg.sender == owner, "grinder: not the owner"
    extcall court.start_audit(job_id, job)
    self._try_draw(job_id)
    assert (staticcall court.dispute_info(job_id)).verifier == sybil, "grinder: sybil not picked"


@external
def grind_appeal(job_id: uint256, sybil: address):
    """
    @notice Appeals, tries to draw at once, and reverts unless `sybil` sits on the panel.
    @param job_id The job id.
    @param sybil The attacker's panel member.
    """
    assert msg.sender == owner, "grinder: not the owner"
    extcall court.appeal(job_id)
    self._try_draw(job_id)
    assert sybil in (staticcall court.dispute_info(job_id)).panel, "grinder: sybil not picked"


@external
def grind_draw(job_id: uint256, sybil: address):
    """
    @notice Calls `draw` and reverts unless `sybil` is the verifier or on the panel drawn.
    @param job_id The job id.
    @param sybil The attacker's node.
    """
    assert msg.sender == owner, "grinder: not the owner"
    extcall court.draw(job_id)
    d: ICourt.Dispute = staticcall court.dispute_info(job_id)
    picked: bool = False
    if d.phase == PH_ASSIGNED:
        picked = d.verifier == sybil
    elif d.phase == PH_APPEALED:
        picked = sybil in d.panel
    assert picked, "grinder: sybil not picked"


@external
def peek_dispute(job_id: uint256, job: IMarket.Job):
    """
    @notice Disputes, tries to draw at once, and records what it could see (no revert).
    @param job_id The job id.
    @param job The job's fields.
    """
    assert msg.sender == owner, "grinder: not the owner"
    extcall court.dispute(job_id, job)
    self.seen_draw_ok = self._try_draw(job_id)
    d: ICourt.Dispute = staticcall court.dispute_info(job_id)
    self.seen_phase = d.phase
    self.seen_verifier = d.verifier


@internal
def _try_draw(job_id: uint256) -> bool:
    return raw_call(
        court.address,
        abi_encode(job_id, method_id=method_id("draw(uint256)")),
        revert_on_failure=False,
    )
