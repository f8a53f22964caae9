# pragma version ~=0.4.3
# pragma nonreentrancy on
# pragma experimental-codegen
# pragma optimize codesize
"""
@title verinfer court
@license GNU Affero General Public License v3.0 or later
@notice Disputes, random audits and appeals of PROTOCOL §7. A dispute (bonded, by anyone
        but the node) or a selected audit moves a published job to VERIFYING and requests
        a draw; a separate permissionless `draw`, from the next block on, picks the
        verifier from the hash of the request's block (which did not exist when the
        request was made), uniformly over the staked nodes that served the model before
        it. The verifier must accept and post a verdict in time, or it is penalised and
        replaced (a new draw). A verdict can be appealed once to a panel of 3 further
        nodes, drawn the same way, whose majority is final and whose overturning slashes
        the verifier. The court holds no tokens: it settles through the market's `court_*`
        hooks.
"""

from snekmate.auth import ownable
from snekmate.auth import ownable_2step

from snekmate.utils import block_hash

from interfaces import ICourt
from interfaces import IMarket

implements: ICourt

initializes: ownable
initializes: ownable_2step[ownable := ownable]

exports: ownable_2step.__interface__


# ---- constants ----
MAX_BPS: constant(uint256) = 10_000
MAX_NODES: constant(uint256) = 64
PANEL_SIZE: constant(uint256) = 3
MAX_ROUNDS: constant(uint8) = 3
AUDIT_DELAY_BLOCKS: constant(uint256) = 2
MAX_AMOUNT: constant(uint256) = 2**96 - 1  # bonds and fees pack into 96-128 bits

KIND_DISPUTE: constant(uint8) = 1
KIND_AUDIT: constant(uint8) = 2

PH_ASSIGNED: constant(uint8) = 1
PH_ACCEPTED: constant(uint8) = 2
PH_VERDICT: constant(uint8) = 3
PH_APPEALED: constant(uint8) = 4
PH_UNRESOLVED: constant(uint8) = 5
PH_SETTLED: constant(uint8) = 6
PH_DRAWING: constant(uint8) = 7  # a verifier draw is requested
PH_PANEL_DRAWING: constant(uint8) = 8  # an appeal panel draw is requested

KEEPER_CUT: constant(uint256) = 10  # an audit's keeper earns 1/10 of the audit reward

# private jobs (docs/protocol.md §8): the market marks one in submitted_at's top bit
PRIVATE_FLAG: constant(uint64) = 2**63
MAX_WRAPPED: constant(uint256) = 512  # a job key wrapped to the verifier or to each panel member
K_PRIVATE: constant(uint256) = 1  # _keys: private job
K_PANEL: constant(uint256) = 2  # _keys: the key was handed to the drawn panel
K_ROUND_SHIFT: constant(uint256) = 8  # _keys: the verifier round the key was handed for
K_DEADLINE_SHIFT: constant(uint256) = 64  # _keys: the hand deadline of the current recipients
K_ROUND_MASK: constant(uint256) = 255 << 8
K_NEW_WINDOW: constant(uint256) = 2**64 - 1 - K_PANEL  # keeps all but the panel bit and deadline

P_DISPUTE_BOND: constant(uint8) = 0
P_APPEAL_BOND: constant(uint8) = 1
P_ACCEPT_WINDOW: constant(uint8) = 2
P_VERDICT_WINDOW: constant(uint8) = 3
P_APPEAL_WINDOW: constant(uint8) = 4
P_VOTE_WINDOW: constant(uint8) = 5
P_VERIFIER_FEE: constant(uint8) = 6
P_NO_SHOW_PENALTY: constant(uint8) = 7
P_SLASH_CHALLENGER_BPS: constant(uint8) = 8
P_SLASH_VERIFIER_BPS: constant(uint8) = 9
P_AUDIT_RATE_BPS: constant(uint8) = 10
P_AUDIT_FEE: constant(uint8) = 11


# ---- storage ----
market: public(immutable(IMarket))

dispute_bond: public(uint256)
appeal_bond: public(uint256)
accept_window: public(uint256)
verdict_window: public(uint256)
appeal_window: public(uint256)
vote_window: public(uint256)
verifier_fee: public(uint256)
no_show_penalty: public(uint256)
slash_challenger_bps: public(uint256)
slash_verifier_bps: public(uint256)
audit_rate_bps: public(uint256)
audit_fee: public(uint256)

# A dispute record is packed by hand (one 22,100-gas slot per field adds up fast):
# _meta = kind | phase << 8 | rounds << 16 | verdict_valid << 24 | final_valid << 25
#         | votes_valid << 32 | votes_invalid << 40 | deadline << 64 | bond << 128
_meta: HashMap[uint256, uint256]
_challenger: HashMap[uint256, address]
_node: HashMap[uint256, address]
_model: HashMap[uint256, bytes32]
_verifier: HashMap[uint256, address]
_appeal: HashMap[uint256, uint256]  # appellant | appeal_bond << 160
_panel: HashMap[uint256, DynArray[address, PANEL_SIZE]]
_voted: HashMap[uint256, DynArray[address, PANEL_SIZE]]
_excluded: HashMap[uint256, HashMap[address, bool]]  # verifiers replaced for lateness
_votes: HashMap[uint256, HashMap[address, uint8]]  # 1 valid, 2 invalid
_draw: HashMap[uint256, uint256]  # seed block | min_stake at the opening << 64
# private jobs only: K_PRIVATE | K_PANEL | handed round << 8 | hand deadline << 64
_keys: HashMap[uint256, uint256]


@deploy
def __init__(
    market_: address,
    dispute_bond_: uint256,
    appeal_bond_: uint256,
    verifier_fee_: uint256,
    no_show_penalty_: uint256,
    audit_fee_: uint256,
):
    """
    @notice Deploys the court for a market; token amounts are in the market's token.
    @param market_ The market contract (call market.set_court afterwards).
    @param dispute_bond_ The bond a challenger posts.
    @param appeal_bond_ The appeal bond, larger than the dispute bond.
    @param verifier_fee_ What a verifier earns from the bond of a failed dispute.
    @param no_show_penalty_ Taken from a verifier or panel member that does not act in time.
    @param audit_fee_ What an audit's verifier earns from the audit pool.
    """
    ownable.__init__()
    ownable_2step.__init__()
    assert market_ != empty(address), "court: zero market"
    assert dispute_bond_ > 0 and dispute_bond_ < appeal_bond_ and appeal_bond_ <= MAX_AMOUNT, "court: param out of bounds"
    assert verifier_fee_ <= dispute_bond_, "court: param out of bounds"
    assert no_show_penalty_ <= MAX_AMOUNT and audit_fee_ <= MAX_AMOUNT, "court: param out of bounds"
    market = IMarket(market_)
    assert self._deters(600, staticcall market.collateral_bps(), 2_500), "court: breaks deterrence"
    self.dispute_bond = dispute_bond_
    self.appeal_bond = appeal_bond_
    self.verifier_fee = verifier_fee_
    self.no_show_penalty = no_show_penalty_
    self.audit_fee = audit_fee_
    self.accept_window = 600
    self.verdict_window = 3_600
    self.appeal_window = 3_600
    self.vote_window = 7_200
    self.slash_challenger_bps = 2_500
    self.slash_verifier_bps = 2_500
    self.audit_rate_bps = 600


# ---- owner ----
@external
def set_param(param: uint8, new_value: uint256):
    """
    @notice Sets one parameter within its hard-coded bounds (see docs/protocol.md).
    @param param The parameter id (0 dispute_bond .. 11 audit_fee).
    @param new_value The new value.
    """
    ownable._check_owner()
    old: uint256 = 0
    if param == P_DISPUTE_BOND:
        assert new_value > 0 and new_value < self.appeal_bond and new_value >= self.verifier_fee, "court: param out of bounds"
        old = self.dispute_bond
        self.dispute_bond = new_value
    elif param == P_APPEAL_BOND:
        assert new_value > self.dispute_bond and new_value <= MAX_AMOUNT, "court: param out of bounds"
        old = self.appeal_bond
        self.appeal_bond = new_value
    elif param == P_ACCEPT_WINDOW:
        assert new_value >= 60 and new_value <= 86_400, "court: param out of bounds"
        old = self.accept_window
        self.accept_window = new_value
    elif param == P_VERDICT_WINDOW:
        assert new_value >= 300 and new_value <= 3 * 86_400, "court: param out of bounds"
        old = self.verdict_window
        self.verdict_window = new_value
    elif param == P_APPEAL_WINDOW:
        assert new_value >= 300 and new_value <= 3 * 86_400, "court: param out of bounds"
        old = self.appeal_window
        self.appeal_window = new_value
    elif param == P_VOTE_WINDOW:
        assert new_value >= 300 and new_value <= 3 * 86_400, "court: param out of bounds"
        old = self.vote_window
        self.vote_window = new_value
    elif param == P_VERIFIER_FEE:
        assert new_value <= self.dispute_bond, "court: param out of bounds"
        old = self.verifier_fee
        self.verifier_fee = new_value
    elif param == P_NO_SHOW_PENALTY:
        assert new_value <= MAX_AMOUNT, "court: param out of bounds"
        old = self.no_show_penalty
        self.no_show_penalty = new_value
    elif param == P_SLASH_CHALLENGER_BPS:
        assert new_value <= 5_000, "court: param out of bounds"
        assert self._deters(self.audit_rate_bps, staticcall market.collateral_bps(), new_value), "court: breaks deterrence"
        old = self.slash_challenger_bps
        self.slash_challenger_bps = new_value
    elif param == P_SLASH_VERIFIER_BPS:
        assert new_value <= 5_000, "court: param out of bounds"
        old = self.slash_verifier_bps
        self.slash_verifier_bps = new_value
    elif param == P_AUDIT_RATE_BPS:
        assert new_value >= 50 and new_value <= MAX_BPS, "court: param out of bounds"
        assert self._deters(new_value, staticcall market.collateral_bps(), self.slash_challenger_bps), "court: breaks deterrence"
        old = self.audit_rate_bps
        self.audit_rate_bps = new_value
    elif param == P_AUDIT_FEE:
        assert new_value <= MAX_AMOUNT, "court: param out of bounds"
        old = self.audit_fee
        self.audit_fee = new_value
    else:
        raise "court: unknown param"
    log ICourt.ParamChanged(param=param, old_value=old, new_value=new_value)


# ---- deterrence ----
@view
@external
def deters(collateral_bps: uint256) -> bool:
    """
    @notice Whether a market collateral ratio keeps cheating unprofitable with this court's
            audit rate: audit rate x collateral ratio x the share of a slash that cannot
            flow back to the cheater (everything but the challenger's share, which a
            cheater's sybil keeper or challenger can take) > 1 (docs/protocol.md §7).
    @param collateral_bps The market's collateral ratio in bps.
    @return True if the product exceeds 1.
    """
    return self._deters(self.audit_rate_bps, collateral_bps, self.slash_challenger_bps)


# ---- opening ----
@external
def dispute(job_id: uint256, job: IMarket.Job):
    """
    @notice Disputes a published result inside its challenge window and requests the
            verifier's draw (call `draw` from the next block on). The bond is taken from
            the caller's prepaid balance in the market (deposit first).
    @param job_id The job id.
    @param job The job's fields as last emitted.
    """
    assert msg.sender != job.node, "court: node cannot dispute own job"
    if job.submitted_at >= PRIVATE_FLAG:
        assert msg.sender == job.client, "court: only the client disputes a private job"
    bond: uint256 = self.dispute_bond
    extcall market.court_open(job_id, job, msg.sender, bond)
    self._open(job_id, KIND_DISPUTE, msg.sender, bond, job)
    log ICourt.DisputeOpened(job_id=job_id, challenger=msg.sender, node=job.node, bond=bond)


@external
def start_audit(job_id: uint256, job: IMarket.Job):
    """
    @notice Starts the random audit of a published job selected by the block hash of
            `published_block + 2`, inside the challenge window, and requests the
            verifier's draw; any keeper. The keeper earns a tenth of the audit reward and,
            if the audit proves fraud, the challenger's share of the slash.
    @param job_id The job id.
    @param job The job's fields as last emitted.
    """
    target: uint256 = convert(job.published_block, uint256) + AUDIT_DELAY_BLOCKS
    assert block.number > target, "court: audit seed not yet available"
    assert block.number <= target + 256, "court: audit seed expired"
    assert self._selected(job_id, blockhash(target)), "court: not selected for audit"
    extcall market.court_open(job_id, job, msg.sender, 0)
    self._open(job_id, KIND_AUDIT, msg.sender, 0, job)
    log ICourt.AuditStarted(job_id=job_id, keeper=msg.sender, node=job.node)


@external
def draw(job_id: uint256):
    """
    @notice Draws the requested verifier or appeal panel; permissionless, from the block
            after the request on. The seed is the hash of the request's block, so neither
            the requester nor the caller of `draw` can choose the outcome, and reverting
            changes nothing. Each candidate gets the ticket keccak256(seed, candidate);
            the lowest tickets win: a uniform draw over the staked nodes that served the
            model before the request. If the seed block's hash is no longer available
            (more than 256 blocks, or 8,191 with EIP-2935), the draw is requested anew.
            No verifier left: the dispute becomes unresolved. Fewer than 3 panel members
            left: the panel is those left, and its majority decides; none left: the appeal
            bond is returned and the appeal window opens again.
    @param job_id The job id.
    """
    d: ICourt.Dispute = self._load(job_id, True)
    assert d.phase == PH_DRAWING or d.phase == PH_PANEL_DRAWING, "court: nothing to draw"
    req: uint256 = self._draw[job_id]
    seed_block: uint256 = req & (2**64 - 1)
    assert block.number > seed_block, "court: draw not ready"
    seed_hash: bytes32 = block_hash._block_hash(seed_block)
    if seed_hash == empty(bytes32):
        self._request(job_id, d.phase == PH_PANEL_DRAWING, req >> 64)
        return
    seed: bytes32 = keccak256(abi_encode(seed_hash, job_id, d.rounds, d.phase))
    candidates: DynArray[address, MAX_NODES] = staticcall market.draw_candidates(d.model_id, seed_block, req >> 64)
    if d.phase == PH_DRAWING:
        picked: DynArray[address, PANEL_SIZE] = self._lowest(job_id, d, candidates, seed, 1)
        if len(picked) == 0:
            d.phase = PH_UNRESOLVED
            d.deadline = convert(block.timestamp, uint64)
        else:
            extcall market.court_hold(picked[0], True)
            d.verifier = picked[0]
            d.rounds += 1
            d.phase = PH_ASSIGNED
            d.deadline = convert(block.timestamp + self.accept_window, uint64)
            self._verifier[job_id] = d.verifier
            self._key_window(job_id, False)
            log ICourt.VerifierAssigned(job_id=job_id, verifier=d.verifier, round=d.rounds, accept_deadline=d.deadline)
        self._meta[job_id] = self._pack(d)
        return
    panel: DynArray[address, PANEL_SIZE] = self._lowest(job_id, d, candidates, seed, PANEL_SIZE)
    if len(panel) == 0:
        # every candidate left: the appeal is void, its bond goes back, and the appeal
        # window opens again for anyone (the accused included)
        self._appeal[job_id] = 0
        extcall market.court_pay(d.appellant, d.appeal_bond)
        d.phase = PH_VERDICT
        d.deadline = convert(block.timestamp + self.appeal_window, uint64)
        self._meta[job_id] = self._pack(d)
        log ICourt.PanelDrawn(job_id=job_id, panel=empty(DynArray[address, PANEL_SIZE]), vote_deadline=0)
        return
    for member: address in panel:
        extcall market.court_hold(member, True)
    d.phase = PH_APPEALED
    d.deadline = convert(block.timestamp + self.vote_window, uint64)
    self._meta[job_id] = self._pack(d)
    self._panel[job_id] = panel
    self._key_window(job_id, True)
    log ICourt.PanelDrawn(job_id=job_id, panel=panel, vote_deadline=d.deadline)


@view
@external
def is_audit_selected(job_id: uint256, published_block: uint64) -> bool:
    """
    @notice Whether a job published at `published_block` is selected for audit; false
            while the seed block does not exist yet or is older than 256 blocks.
    @param job_id The job id.
    @param published_block The block of its ResultPublished event.
    @return True if an audit can be started now.
    """
    target: uint256 = convert(published_block, uint256) + AUDIT_DELAY_BLOCKS
    if block.number <= target or block.number > target + 256:
        return False
    return self._selected(job_id, blockhash(target))


# ---- verifier ----
@external
def accept(job_id: uint256):
    """
    @notice The assigned verifier accepts the task before its accept deadline.
    @param job_id The job id.
    """
    d: ICourt.Dispute = self._load(job_id, False)
    assert d.phase == PH_ASSIGNED, "court: not awaiting acceptance"
    assert msg.sender == d.verifier, "court: not the verifier"
    assert block.timestamp <= convert(d.deadline, uint256), "court: accept deadline passed"
    deadline: uint64 = convert(block.timestamp + self.verdict_window, uint64)
    d.phase = PH_ACCEPTED
    d.deadline = deadline
    self._meta[job_id] = self._pack(d)
    log ICourt.VerifierAccepted(job_id=job_id, verifier=msg.sender, verdict_deadline=deadline)


@external
def post_verdict(job_id: uint256, valid: bool):
    """
    @notice The verifier posts its verdict (PROTOCOL §6); the appeal window opens.
    @param job_id The job id.
    @param valid True if the published result passed teacher-forced re-execution.
    """
    d: ICourt.Dispute = self._load(job_id, False)
    assert d.phase == PH_ACCEPTED, "court: not awaiting verdict"
    assert msg.sender == d.verifier, "court: not the verifier"
    assert block.timestamp <= convert(d.deadline, uint256), "court: verdict deadline passed"
    deadline: uint64 = convert(block.timestamp + self.appeal_window, uint64)
    d.phase = PH_VERDICT
    d.verdict_valid = valid
    if self._withheld(job_id, d.rounds):
        # a private job whose key was not handed to this verifier in time: an audit proves
        # the node withheld it (fraud), a dispute fails (the client withheld it)
        d.verdict_valid = d.kind == KIND_DISPUTE
    d.deadline = deadline
    self._meta[job_id] = self._pack(d)
    log ICourt.VerdictPosted(job_id=job_id, verifier=msg.sender, valid=d.verdict_valid, appeal_deadline=deadline)


@external
def replace_verifier(job_id: uint256):
    """
    @notice Replaces a verifier that missed its accept or verdict deadline; it pays the
            no-show penalty into the audit pool and a new draw is requested. After 3
            verifiers, or with none left, the dispute becomes unresolved and settles as
            valid with the bond returned.
    @param job_id The job id.
    """
    d: ICourt.Dispute = self._load(job_id, False)
    assert d.phase == PH_ASSIGNED or d.phase == PH_ACCEPTED, "court: no verifier to replace"
    assert block.timestamp > convert(d.deadline, uint256), "court: verifier not late"
    late: address = d.verifier
    penalty: uint256 = self._penalise(late, job_id)
    extcall market.court_hold(late, False)
    log ICourt.VerifierReplaced(job_id=job_id, verifier=late, penalty=penalty)
    self._excluded[job_id][late] = True
    self._verifier[job_id] = empty(address)
    if d.rounds < MAX_ROUNDS:
        self._meta[job_id] = self._pack(d)
        self._request(job_id, False, self._draw[job_id] >> 64)
    else:
        d.phase = PH_UNRESOLVED
        d.deadline = convert(block.timestamp, uint64)
        self._meta[job_id] = self._pack(d)


# ---- private jobs ----
@external
def hand_key(job_id: uint256, wrapped: Bytes[MAX_WRAPPED]):
    """
    @notice Hands a private job's key to its drawn verifier (or, during an appeal, to the
            panel), wrapped to their registered encryption keys, before the hand deadline
            (accept window after the draw). Only the node or, for a dispute, the client
            (the challenger) holds the key. A verdict on a private job whose key was not
            handed to its verifier in time is fixed by the court: invalid for an audit
            (the node withheld it), valid for a dispute (the client withheld it), and it
            cannot be appealed. Whether the key matches the commitment in the job's input
            is checked off chain by the verifier and the panel (docs/privacy.md).
    @param job_id The job id.
    @param wrapped verinfer.privacy.wrap_key of the job key for each recipient, in order.
    """
    k: uint256 = self._keys[job_id]
    assert k & K_PRIVATE != 0, "court: not a private job"
    d: ICourt.Dispute = self._load(job_id, True)
    assert msg.sender == d.node or (d.kind == KIND_DISPUTE and msg.sender == d.challenger), "court: not a key holder"
    assert len(wrapped) > 0, "court: empty key"
    recipients: DynArray[address, PANEL_SIZE] = [d.verifier]
    if d.phase == PH_APPEALED:
        recipients = d.panel
        k |= K_PANEL
    else:
        assert d.phase == PH_ASSIGNED or d.phase == PH_ACCEPTED, "court: nobody to hand the key to"
        k = (k & ~K_ROUND_MASK) | (convert(d.rounds, uint256) << K_ROUND_SHIFT)
    assert block.timestamp <= k >> K_DEADLINE_SHIFT, "court: key deadline passed"
    self._keys[job_id] = k
    log ICourt.KeyHanded(job_id=job_id, holder=msg.sender, recipients=recipients, wrapped=wrapped)


@view
@external
def key_info(job_id: uint256) -> (bool, bool, uint8, uint64):
    """
    @notice A private job's key-handing record.
    @param job_id The job id.
    @return (private job under verification, handed to the panel, verifier round it was
            handed for (0: none), hand deadline of the current recipients).
    """
    k: uint256 = self._keys[job_id]
    return (
        k & K_PRIVATE != 0,
        k & K_PANEL != 0,
        convert((k >> K_ROUND_SHIFT) & 255, uint8),
        convert(k >> K_DEADLINE_SHIFT, uint64),
    )


# ---- appeal ----
@external
def appeal(job_id: uint256):
    """
    @notice Appeals a verdict once, inside the appeal window, to a panel of 3 further
            nodes drawn as the verifier was (call `draw` from the next block on). The bond
            is taken from the caller's prepaid balance: the dispute bond when the caller
            is the accused node (its stake is at stake already), the appeal bond otherwise.
    @param job_id The job id.
    """
    d: ICourt.Dispute = self._load(job_id, False)
    assert self._appeal[job_id] == 0, "court: already appealed"
    assert d.phase == PH_VERDICT, "court: no verdict to appeal"
    assert block.timestamp <= convert(d.deadline, uint256), "court: appeal window closed"
    assert not self._withheld(job_id, d.rounds), "court: key withheld"
    d.appellant = msg.sender
    now: DynArray[address, MAX_NODES] = staticcall market.draw_candidates(d.model_id, block.number, self._draw[job_id] >> 64)
    assert len(self._lowest(job_id, d, now, empty(bytes32), PANEL_SIZE)) == PANEL_SIZE, "court: panel unavailable"
    bond: uint256 = self.appeal_bond
    if msg.sender == d.node:
        bond = self.dispute_bond
    extcall market.court_take_bond(msg.sender, bond)
    self._appeal[job_id] = convert(msg.sender, uint256) | (bond << 160)
    self._request(job_id, True, self._draw[job_id] >> 64)
    log ICourt.AppealOpened(job_id=job_id, appellant=msg.sender, bond=bond)


@external
def panel_vote(job_id: uint256, valid: bool):
    """
    @notice A panel member votes on the appealed result, before the vote deadline.
    @param job_id The job id.
    @param valid True if the published result is valid.
    """
    d: ICourt.Dispute = self._load(job_id, True)
    assert d.phase == PH_APPEALED, "court: not in appeal"
    assert msg.sender in d.panel, "court: not on the panel"
    assert msg.sender not in d.voted, "court: already voted"
    assert block.timestamp <= convert(d.deadline, uint256), "court: vote deadline passed"
    self._voted[job_id].append(msg.sender)
    vote: bool = valid
    k: uint256 = self._keys[job_id]
    if k & K_PRIVATE != 0 and k & K_PANEL == 0:
        # nobody handed the key to the panel: it cannot re-execute, the verdict stands
        vote = d.verdict_valid
    if vote:
        d.votes_valid += 1
        self._votes[job_id][msg.sender] = 1
    else:
        d.votes_invalid += 1
        self._votes[job_id][msg.sender] = 2
    self._meta[job_id] = self._pack(d)
    log ICourt.PanelVoted(job_id=job_id, member=msg.sender, valid=vote)


# ---- settlement ----
@external
def settle(job_id: uint256, job: IMarket.Job):
    """
    @notice Applies the final outcome once it is due (appeal window over, panel majority
            reached or vote deadline over, or no verifier left); permissionless.
            Valid: the node is paid, the bond pays the verifier and compensates the node.
            Invalid: the client is refunded in full, the node's whole stake is slashed,
            the challenger gets the bond back plus a share, the verifier a share, the rest
            funds audits. A verifier the panel overturns is slashed whole.
    @param job_id The job id.
    @param job The job's fields as last emitted.
    """
    d: ICourt.Dispute = self._load(job_id, True)
    final: bool = True
    appealed: bool = d.phase == PH_APPEALED
    overturned: bool = False
    if d.phase == PH_VERDICT:
        assert block.timestamp > convert(d.deadline, uint256), "court: appeal window open"
        final = d.verdict_valid
    elif appealed:
        half: uint256 = len(d.panel)  # a majority: more than half of the drawn panel
        decided: bool = 2 * convert(d.votes_valid, uint256) > half or 2 * convert(d.votes_invalid, uint256) > half
        assert decided or block.timestamp > convert(d.deadline, uint256), "court: vote in progress"
        final = d.verdict_valid
        if decided:
            final = 2 * convert(d.votes_valid, uint256) > half
        overturned = final != d.verdict_valid
    else:
        assert d.phase == PH_UNRESOLVED, "court: nothing to settle"
    unresolved: bool = d.phase == PH_UNRESOLVED
    settled: ICourt.Dispute = d
    settled.phase = PH_SETTLED
    settled.final_valid = final
    self._meta[job_id] = self._pack(settled)
    slashed: uint256 = extcall market.court_resolve(job_id, job, final)
    if d.verifier != empty(address):
        extcall market.court_hold(d.verifier, False)
    for member: address in d.panel:
        extcall market.court_hold(member, False)

    # who did the verification work: the verifier, or the panel majority that overruled it
    workers: DynArray[address, PANEL_SIZE] = [d.verifier]
    if appealed:
        majority: DynArray[address, PANEL_SIZE] = self._majority(job_id, d, final)
        if overturned:
            self._settle_overturned(job_id, d, majority)
            workers = majority
        else:
            self._settle_upheld(job_id, d, majority)
    if unresolved:
        if d.bond > 0:
            extcall market.court_pay(d.challenger, d.bond)
    elif final:
        self._pay_valid(d, job, workers)
    else:
        self._pay_fraud(d, job, slashed, workers)
    log ICourt.DisputeSettled(
        job_id=job_id, node=job.node, valid=final, appealed=appealed, verifier_overturned=overturned
    )


@view
@external
def dispute_info(job_id: uint256) -> ICourt.Dispute:
    """
    @notice The dispute or audit record of a job.
    @param job_id The job id.
    @return The record (phase 0 if none).
    """
    return self._load(job_id, True)


# ---- internal ----
@view
@internal
def _selected(job_id: uint256, seed: bytes32) -> bool:
    return convert(keccak256(abi_encode(seed, job_id)), uint256) % MAX_BPS < self.audit_rate_bps


@pure
@internal
def _deters(rate_bps: uint256, collateral_bps: uint256, challenger_bps: uint256) -> bool:
    return rate_bps * collateral_bps * (MAX_BPS - challenger_bps) > MAX_BPS * MAX_BPS * MAX_BPS


@internal
def _open(job_id: uint256, kind: uint8, challenger: address, bond: uint256, job: IMarket.Job):
    """Writes a new dispute record and requests its verifier's draw; reverts if no node
    could be drawn now."""
    d: ICourt.Dispute = empty(ICourt.Dispute)
    d.kind = kind
    d.challenger = challenger
    d.bond = bond
    d.node = job.node
    d.model_id = job.model_id
    min_stake: uint256 = staticcall market.min_stake()
    now: DynArray[address, MAX_NODES] = staticcall market.draw_candidates(job.model_id, block.number, min_stake)
    assert len(self._lowest(job_id, d, now, empty(bytes32), 1)) == 1, "court: no eligible verifier"
    self._meta[job_id] = self._pack(d)
    self._challenger[job_id] = challenger
    self._node[job_id] = job.node
    self._model[job_id] = job.model_id
    if job.submitted_at >= PRIVATE_FLAG:
        self._keys[job_id] = K_PRIVATE
    self._request(job_id, False, min_stake)


@internal
def _request(job_id: uint256, panel: bool, min_stake: uint256):
    """Requests a draw seeded by this block's hash (unknown until the block is final)."""
    meta: uint256 = self._meta[job_id]
    phase: uint256 = convert(PH_DRAWING, uint256)
    if panel:
        phase = convert(PH_PANEL_DRAWING, uint256)
    self._meta[job_id] = (meta & ~convert(255 << 8, uint256)) | (phase << 8)
    self._draw[job_id] = block.number | (min_stake << 64)
    log ICourt.DrawRequested(job_id=job_id, seed_block=convert(block.number, uint64), panel=panel)


@view
@internal
def _lowest(
    job_id: uint256, d: ICourt.Dispute, candidates: DynArray[address, MAX_NODES], seed: bytes32, count: uint256
) -> DynArray[address, PANEL_SIZE]:
    """The `count` candidates with the lowest tickets keccak256(seed, candidate), never the
    node, the challenger, the verifier, the appellant or a verifier replaced for lateness
    (fewer if fewer are left), lowest first."""
    best: DynArray[address, PANEL_SIZE] = []
    tickets: DynArray[uint256, PANEL_SIZE] = []
    for cand: address in candidates:
        if cand == d.node or cand == d.challenger or cand == d.verifier or cand == d.appellant:
            continue
        if self._excluded[job_id][cand]:
            continue
        ticket: uint256 = convert(keccak256(abi_encode(seed, cand)), uint256)
        if len(best) == count and ticket >= tickets[count - 1]:
            continue
        if len(best) == count:
            best.pop()
            tickets.pop()
        # insert in order (at most 3 entries)
        best.append(cand)
        tickets.append(ticket)
        k: uint256 = len(best) - 1
        for _: uint256 in range(PANEL_SIZE):
            if k == 0 or tickets[k - 1] <= ticket:
                break
            best[k] = best[k - 1]
            tickets[k] = tickets[k - 1]
            best[k - 1] = cand
            tickets[k - 1] = ticket
            k -= 1
    return best


@internal
def _penalise(node: address, job_id: uint256) -> uint256:
    """Takes the no-show penalty from `node` into the audit pool."""
    penalty: uint256 = extcall market.court_slash(node, self.no_show_penalty, job_id)
    if penalty > 0:
        extcall market.court_pay(empty(address), penalty)
    return penalty


@view
@internal
def _majority(job_id: uint256, d: ICourt.Dispute, final: bool) -> DynArray[address, PANEL_SIZE]:
    """Panel members who voted like the final outcome (empty without a majority)."""
    out: DynArray[address, PANEL_SIZE] = []
    half: uint256 = len(d.panel)
    if 2 * convert(d.votes_valid, uint256) <= half and 2 * convert(d.votes_invalid, uint256) <= half:
        return out
    side: uint8 = 2
    if final:
        side = 1
    for member: address in d.voted:
        if self._votes[job_id][member] == side:
            out.append(member)
    return out


@internal
def _settle_overturned(job_id: uint256, d: ICourt.Dispute, panel_majority: DynArray[address, PANEL_SIZE]):
    """The panel overturned the verifier: slash it whole, refund and reward the appellant."""
    taken: uint256 = extcall market.court_slash(d.verifier, max_value(uint256), job_id)
    to_appellant: uint256 = d.appeal_bond + taken * self.slash_challenger_bps // MAX_BPS
    extcall market.court_pay(d.appellant, to_appellant)
    to_panel: uint256 = taken * self.slash_verifier_bps // MAX_BPS
    paid: uint256 = self._split(panel_majority, to_panel, True)
    rest: uint256 = taken - taken * self.slash_challenger_bps // MAX_BPS - paid
    if rest > 0:
        extcall market.court_pay(empty(address), rest)
    self._penalise_absent(job_id, d)


@internal
def _settle_upheld(job_id: uint256, d: ICourt.Dispute, panel_majority: DynArray[address, PANEL_SIZE]):
    """The verdict stands: the appeal bond pays the panel that confirmed it."""
    paid: uint256 = self._split(panel_majority, d.appeal_bond, False)
    if d.appeal_bond > paid:
        extcall market.court_pay(empty(address), d.appeal_bond - paid)
    self._penalise_absent(job_id, d)


@internal
def _penalise_absent(job_id: uint256, d: ICourt.Dispute):
    for member: address in d.panel:
        if member not in d.voted:
            self._penalise(member, job_id)


@internal
def _split(members: DynArray[address, PANEL_SIZE], amount: uint256, capped: bool) -> uint256:
    """Pays `amount` of the court funds equally to `members`; `capped`: each at most its own
    stake at risk (bonded + unbonding). Returns what was paid; the caller routes the rest."""
    paid: uint256 = 0
    if len(members) == 0 or amount == 0:
        return 0
    share: uint256 = amount // len(members)
    for member: address in members:
        pay: uint256 = share
        if capped:
            info: IMarket.NodeInfo = staticcall market.node_info(member)
            pay = min(share, info.stake + info.unbonding)
        if pay > 0:
            extcall market.court_pay(member, pay)
            paid += pay
    return paid


@internal
def _pay_audit(d: ICourt.Dispute, job: IMarket.Job, workers: DynArray[address, PANEL_SIZE]):
    """An audit's reward from the pool: at most what the job's own audit share funds on
    average, price x audit_share / audit_rate, and at most `audit_fee`; a tenth to the
    keeper, the rest to the verifier(s)."""
    price: uint256 = min(convert(job.output_tokens, uint256) * job.price_per_token, job.max_payment)
    reward: uint256 = min(self.audit_fee, price * staticcall market.audit_share_bps() // self.audit_rate_bps)
    keeper: uint256 = reward // KEEPER_CUT
    if keeper > 0:
        extcall market.court_pay_from_audit_pool(d.challenger, keeper)
    share: uint256 = (reward - keeper) // len(workers)
    if share > 0:
        for w: address in workers:
            extcall market.court_pay_from_audit_pool(w, share)


@internal
def _pay_valid(d: ICourt.Dispute, job: IMarket.Job, workers: DynArray[address, PANEL_SIZE]):
    """The result was valid: the verifier(s) earn the fee, the node the rest of the bond."""
    if d.kind == KIND_AUDIT:
        self._pay_audit(d, job, workers)
        return
    fee: uint256 = min(self.verifier_fee, d.bond)
    paid: uint256 = self._split(workers, fee, False)
    if fee > paid:
        extcall market.court_pay(empty(address), fee - paid)
    if d.bond > fee:
        extcall market.court_pay(job.node, d.bond - fee)


@internal
def _pay_fraud(d: ICourt.Dispute, job: IMarket.Job, slashed: uint256, workers: DynArray[address, PANEL_SIZE]):
    """The result was fraudulent: distribute the node's slashed stake. The verifiers' share
    is capped by each one's own stake at risk; what is left funds audits."""
    to_challenger: uint256 = slashed * self.slash_challenger_bps // MAX_BPS
    if d.bond + to_challenger > 0:
        extcall market.court_pay(d.challenger, d.bond + to_challenger)
    paid: uint256 = self._split(workers, slashed * self.slash_verifier_bps // MAX_BPS, True)
    rest: uint256 = slashed - to_challenger - paid
    if rest > 0:
        extcall market.court_pay(empty(address), rest)
    if d.kind == KIND_AUDIT:
        self._pay_audit(d, job, workers)


@internal
def _key_window(job_id: uint256, panel: bool):
    """Private jobs: opens the hand window of newly drawn recipients (one accept window)."""
    k: uint256 = self._keys[job_id]
    if k & K_PRIVATE == 0:
        return
    k &= K_NEW_WINDOW
    self._keys[job_id] = k | ((block.timestamp + self.accept_window) << K_DEADLINE_SHIFT)


@view
@internal
def _withheld(job_id: uint256, verifier_round: uint8) -> bool:
    """Whether a private job's key was not handed to the verifier of this round."""
    k: uint256 = self._keys[job_id]
    return k & K_PRIVATE != 0 and (k >> K_ROUND_SHIFT) & 255 != convert(verifier_round, uint256)


@pure
@internal
def _pack(d: ICourt.Dispute) -> uint256:
    return (
        convert(d.kind, uint256)
        | (convert(d.phase, uint256) << 8)
        | (convert(d.rounds, uint256) << 16)
        | (convert(d.verdict_valid, uint256) << 24)
        | (convert(d.final_valid, uint256) << 25)
        | (convert(d.votes_valid, uint256) << 32)
        | (convert(d.votes_invalid, uint256) << 40)
        | (convert(d.deadline, uint256) << 64)
        | (d.bond << 128)
    )


@view
@internal
def _load(job_id: uint256, full: bool) -> ICourt.Dispute:
    """Reads a dispute record; `full` adds the appeal fields."""
    meta: uint256 = self._meta[job_id]
    d: ICourt.Dispute = empty(ICourt.Dispute)
    d.kind = convert(meta & 255, uint8)
    d.phase = convert((meta >> 8) & 255, uint8)
    d.rounds = convert((meta >> 16) & 255, uint8)
    d.verdict_valid = (meta >> 24) & 1 == 1
    d.final_valid = (meta >> 25) & 1 == 1
    d.votes_valid = convert((meta >> 32) & 255, uint8)
    d.votes_invalid = convert((meta >> 40) & 255, uint8)
    d.deadline = convert((meta >> 64) & (2**64 - 1), uint64)
    d.bond = meta >> 128
    d.challenger = self._challenger[job_id]
    d.node = self._node[job_id]
    d.model_id = self._model[job_id]
    d.verifier = self._verifier[job_id]
    d.seed_block = convert(self._draw[job_id] & (2**64 - 1), uint64)
    appeal: uint256 = self._appeal[job_id]
    if appeal != 0:
        d.appellant = convert(convert(appeal & (2**160 - 1), uint160), address)
        d.appeal_bond = appeal >> 160
        if full:
            d.panel = self._panel[job_id]
            d.voted = self._voted[job_id]
    return d
