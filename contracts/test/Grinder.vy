# pragma version ~=0.4.3
"""
@title Revert-grinding attacker (tests only)
@notice Disputes a job and keeps the dispute only if its own sybil is the verifier: the
        attack that captured court v1, where the pick was visible right after `dispute`
        returned. Also tries to draw in the disputing transaction, and to draw only when
        the outcome suits it.
"""

from ethereum.ercs import IERC20

from ..interfaces import ICourt
from ..interfaces import IMarket

court: public(ICourt)
market: public(IMarket)


@deploy
def __init__(court_: address, market_: address):
    self.court = ICourt(court_)
    self.market = IMarket(market_)


@external
def fund(token: address, amount: uint256):
    """Deposits `amount` (held by this contract) as the bonds' prepaid balance."""
    extcall IERC20(token).approve(self.market.address, amount)
    extcall self.market.deposit(amount)


@external
def grind(job_id: uint256, job: IMarket.Job, sybil: address):
    """Disputes; reverts unless the verifier picked in this transaction is `sybil`."""
    extcall self.court.dispute(job_id, job)
    d: ICourt.Dispute = staticcall self.court.dispute_info(job_id)
    assert d.verifier == sybil, "grinder: not my sybil"


@external
def dispute_and_draw(job_id: uint256, job: IMarket.Job):
    """Disputes and draws in one transaction."""
    extcall self.court.dispute(job_id, job)
    extcall self.court.draw(job_id)


@external
def dispute(job_id: uint256, job: IMarket.Job):
    """A plain dispute (the draw is someone else's business)."""
    extcall self.court.dispute(job_id, job)


@external
def draw_if_mine(job_id: uint256, sybil: address):
    """Draws, and reverts unless `sybil` was drawn."""
    extcall self.court.draw(job_id)
    d: ICourt.Dispute = staticcall self.court.dispute_info(job_id)
    assert d.verifier == sybil, "grinder: not my sybil"
