# pragma version ~=0.4.3
# pragma nonreentrancy on
# pragma experimental-codegen
# pragma optimize codesize
"""
@title verinfer job market
@license GNU Affero General Public License v3.0 or later
@notice Model registry, staking registry, client prepaid balances and the job escrow
        of PROTOCOL.md §2-§4, in one contract so that the hot path (submit, claim,
        publish, finalize) makes no cross-contract call. Disputes, audits and appeals
        (§7) live in the court contract, which settles through the `court_*` hooks.
        Per job, storage holds one word: keccak256(abi_encode(Settlement)) (the payment
        fields plus the hash of the rest, see IMarket) with its low byte replaced by the
        status. Callers pass the Job struct (finalize: the Settlement) back and the market
        checks it.
        The owner sets parameters within hard-coded bounds and can never move escrow,
        stake, balances, bonds or claimable credits.
"""

from ethereum.ercs import IERC20

from snekmate.auth import ownable
from snekmate.auth import ownable_2step

from interfaces import ICourt
from interfaces import IMarket

implements: IMarket

initializes: ownable
initializes: ownable_2step[ownable := ownable]

exports: ownable_2step.__interface__


# ---- constants ----
MAX_BPS: constant(uint256) = 10_000
MAX_INPUT_BYTES: constant(uint256) = 8_000
MAX_INPUT_ABI: constant(uint256) = 8_192
MAX_PARAMS_ABI: constant(uint256) = 512
MIN_PARAMS_BYTES: constant(uint256) = 192  # encode_params with no stop tokens
MAX_OUTPUT_TOKENS: constant(uint256) = 2_048
MAX_OUTPUT_ABI: constant(uint256) = 8_320  # 4 bytes per token + ciphertext overhead
MAX_JOB_DURATION: constant(uint256) = 30 * 86_400
MAX_NODES_PER_MODEL: constant(uint256) = 64
MAX_MODELS_PER_NODE: constant(uint256) = 16
MAX_BATCH: constant(uint256) = 32
MAX_PUBLISH_BATCH: constant(uint256) = 16
MAX_SUBMIT_BATCH: constant(uint256) = 16
MAX_BATCH_INPUT_ABI: constant(uint256) = 2_048
MAX_BATCH_OUTPUT_ABI: constant(uint256) = 2_176
STATUS_MASK: constant(uint256) = 255
PRIVATE_FORMAT: constant(bytes1) = 0x02  # an input starting with it is a private envelope
PRIVATE_FLAG: constant(uint64) = 2**63  # top bit of submitted_at: a private job (docs/protocol.md §8)
HASH_MASK: constant(uint256) = max_value(uint256) - 255
LOW128: constant(uint256) = 2**128 - 1
PRICE_LIMIT: constant(uint256) = 2**160
INDEX_MASK: constant(uint256) = 2**32 - 1
JOINED_MASK: constant(uint256) = (2**64 - 1) << 32

# _cfg word: one SLOAD serves every parameter on the hot path (offset, width per param)
SH_FEE: constant(uint256) = 0
SH_AUDIT: constant(uint256) = 16
SH_EXCLUSIVE: constant(uint256) = 32
SH_CHALLENGE: constant(uint256) = 48
SH_COLLATERAL: constant(uint256) = 72
SH_PENALTY: constant(uint256) = 96
SH_UNBONDING: constant(uint256) = 112
SH_MIN_STAKE: constant(uint256) = 136

# job status
ST_NONE: constant(uint256) = 0
OPEN: constant(uint256) = 1
CLAIMED: constant(uint256) = 2
PUBLISHED: constant(uint256) = 3
VERIFYING: constant(uint256) = 4
FINALIZED: constant(uint256) = 5
CANCELLED: constant(uint256) = 6
EXPIRED: constant(uint256) = 7
SLASHED: constant(uint256) = 8

# parameter ids for set_param, with hard-coded bounds
P_FEE_BPS: constant(uint8) = 0
P_AUDIT_SHARE_BPS: constant(uint8) = 1
P_CHALLENGE_WINDOW: constant(uint8) = 2
P_EXCLUSIVE_WINDOW: constant(uint8) = 3
P_MIN_STAKE: constant(uint8) = 4
P_COLLATERAL_BPS: constant(uint8) = 5
P_EXPIRE_PENALTY_BPS: constant(uint8) = 6
P_UNBONDING_DELAY: constant(uint8) = 7

MAX_FEE_BPS: constant(uint256) = 1_000
MAX_AUDIT_SHARE_BPS: constant(uint256) = 2_000
MIN_CHALLENGE_WINDOW: constant(uint256) = 60
MAX_CHALLENGE_WINDOW: constant(uint256) = 7 * 86_400
MAX_EXCLUSIVE_WINDOW: constant(uint256) = 3_600
MIN_MIN_STAKE: constant(uint256) = 1
MAX_MIN_STAKE: constant(uint256) = 10**30
MIN_COLLATERAL_BPS: constant(uint256) = 10_000
MAX_COLLATERAL_BPS: constant(uint256) = 1_000_000
MAX_EXPIRE_PENALTY_BPS: constant(uint256) = 10_000
MIN_UNBONDING_DELAY: constant(uint256) = 3_600
MAX_UNBONDING_DELAY: constant(uint256) = 30 * 86_400


# ---- storage ----
struct Stake:
    registered: bool
    slashed: bool
    unbonding: uint256
    unbond_ready_at: uint64


struct Profile:
    pubkey: Bytes[64]
    endpoint: String[256]


token: public(immutable(address))
court: public(address)
fee_recipient: public(address)

# parameters (set_param), packed: see SH_* and the getters below
_cfg: uint256

# models
model_registered: public(HashMap[bytes32, bool])
_model_nodes: HashMap[bytes32, DynArray[address, MAX_NODES_PER_MODEL]]
# price_per_token << 96 | joined block << 32 | 1-based index in _model_nodes (0: not serving)
_serve: HashMap[bytes32, HashMap[address, uint256]]
_node_models: HashMap[address, DynArray[bytes32, MAX_MODELS_PER_NODE]]

# nodes
_stakes: HashMap[address, Stake]
_bond: HashMap[address, uint256]  # locked << 128 | stake: one slot for the claim lock
_holds: HashMap[address, uint256]  # open court roles (verifier, panel seat): no complete_unbond
_profiles: HashMap[address, Profile]
total_stake: public(uint256)

# money
balance_of: public(HashMap[address, uint256])
claimable: public(HashMap[address, uint256])
_pools: uint256  # audit_pool << 128 | protocol_fees
court_funds: public(uint256)

# jobs: hash of the Job (low byte cleared) | status
_jobs: HashMap[uint256, uint256]
next_job_id: public(uint256)


@deploy
def __init__(token_: address, min_stake_: uint256, fee_recipient_: address):
    """
    @notice Deploys the market for one payment/stake token with default parameters.
    @param token_ The ERC20 that pays jobs and backs stake.
    @param min_stake_ The minimum bonded stake of an active node.
    @param fee_recipient_ Receives the protocol fee when the owner withdraws it.
    """
    ownable.__init__()
    ownable_2step.__init__()
    assert token_ != empty(address), "market: zero token"
    assert fee_recipient_ != empty(address), "market: zero fee recipient"
    assert min_stake_ >= MIN_MIN_STAKE and min_stake_ <= MAX_MIN_STAKE, "market: param out of bounds"
    token = token_
    self.fee_recipient = fee_recipient_
    self._cfg = (
        (100 << SH_FEE) | (200 << SH_AUDIT) | (60 << SH_EXCLUSIVE) | (3_600 << SH_CHALLENGE)
        | (250_000 << SH_COLLATERAL) | (5_000 << SH_PENALTY) | ((7 * 86_400) << SH_UNBONDING)
        | (min_stake_ << SH_MIN_STAKE)
    )
    self.next_job_id = 1


# ---- owner ----
@external
def set_court(court: address):
    """
    @notice Sets the court contract once (it is deployed after the market).
    @param court The court address.
    """
    ownable._check_owner()
    assert self.court == empty(address), "market: court already set"
    assert court != empty(address), "market: zero court"
    assert staticcall ICourt(court).market() == self, "market: court of another market"
    self.court = court
    log IMarket.CourtSet(court=court)


@external
def set_param(param: uint8, new_value: uint256):
    """
    @notice Sets one parameter within its hard-coded bounds (see docs/protocol.md).
    @param param The parameter id (0 fee_bps .. 7 unbonding_delay).
    @param new_value The new value.
    """
    ownable._check_owner()
    offset: uint256 = 0
    width: uint256 = 16
    lo: uint256 = 0
    hi: uint256 = 0
    if param == P_FEE_BPS:
        offset = SH_FEE
        hi = MAX_FEE_BPS
    elif param == P_AUDIT_SHARE_BPS:
        offset = SH_AUDIT
        hi = MAX_AUDIT_SHARE_BPS
    elif param == P_CHALLENGE_WINDOW:
        offset = SH_CHALLENGE
        width = 24
        lo = MIN_CHALLENGE_WINDOW
        hi = MAX_CHALLENGE_WINDOW
    elif param == P_EXCLUSIVE_WINDOW:
        offset = SH_EXCLUSIVE
        hi = MAX_EXCLUSIVE_WINDOW
    elif param == P_MIN_STAKE:
        offset = SH_MIN_STAKE
        width = 120
        lo = MIN_MIN_STAKE
        hi = MAX_MIN_STAKE
    elif param == P_COLLATERAL_BPS:
        offset = SH_COLLATERAL
        width = 24
        lo = MIN_COLLATERAL_BPS
        hi = MAX_COLLATERAL_BPS
    elif param == P_EXPIRE_PENALTY_BPS:
        offset = SH_PENALTY
        hi = MAX_EXPIRE_PENALTY_BPS
    elif param == P_UNBONDING_DELAY:
        offset = SH_UNBONDING
        width = 24
        lo = MIN_UNBONDING_DELAY
        hi = MAX_UNBONDING_DELAY
    else:
        raise "market: unknown param"
    assert new_value >= lo and new_value <= hi, "market: param out of bounds"
    if param == P_COLLATERAL_BPS and self.court != empty(address):
        # deterrence (docs/protocol.md §7), counted by the court
        assert staticcall ICourt(self.court).deters(new_value), "market: breaks deterrence"
    cfg: uint256 = self._cfg
    old: uint256 = self._field(cfg, offset, width)
    mask: uint256 = ((1 << width) - 1) << offset
    self._cfg = (cfg & (max_value(uint256) - mask)) | (new_value << offset)
    log IMarket.ParamChanged(param=param, old_value=old, new_value=new_value)


@external
def set_fee_recipient(recipient: address):
    """
    @notice Sets who receives the protocol fee.
    @param recipient The new fee recipient.
    """
    ownable._check_owner()
    assert recipient != empty(address), "market: zero fee recipient"
    self.fee_recipient = recipient
    log IMarket.FeeRecipientSet(recipient=recipient)


@external
def withdraw_fees() -> uint256:
    """
    @notice Credits the accrued protocol fee to the fee recipient's claimable balance.
    @dev Only the fee bucket moves: escrow, stake, balances and bonds are out of reach.
    @return The amount credited.
    """
    ownable._check_owner()
    pools: uint256 = self._pools
    amount: uint256 = pools & LOW128
    assert amount > 0, "market: no fees"
    self._pools = pools - amount
    self._credit(self.fee_recipient, amount)
    log IMarket.FeesWithdrawn(recipient=self.fee_recipient, amount=amount)
    return amount


# ---- parameter and pool getters (values packed in storage) ----
@view
@external
def fee_bps() -> uint256:
    """
    @notice Protocol fee, in bps of each job's price.
    @return The fee in bps.
    """
    return self._field(self._cfg, SH_FEE, 16)


@view
@external
def audit_share_bps() -> uint256:
    """
    @notice Share of each job's price that funds the audit pool, in bps.
    @return The share in bps.
    """
    return self._field(self._cfg, SH_AUDIT, 16)


@view
@external
def exclusive_window() -> uint256:
    """
    @notice Seconds after submission during which only the preferred node may claim.
    @return The window in seconds.
    """
    return self._field(self._cfg, SH_EXCLUSIVE, 16)


@view
@external
def challenge_window() -> uint256:
    """
    @notice Seconds after publication during which a result can be disputed or audited.
    @return The window in seconds.
    """
    return self._field(self._cfg, SH_CHALLENGE, 24)


@view
@external
def collateral_bps() -> uint256:
    """
    @notice Collateral locked at claim, in bps of the job's max payment.
    @return The ratio in bps.
    """
    return self._field(self._cfg, SH_COLLATERAL, 24)


@view
@external
def expire_penalty_bps() -> uint256:
    """
    @notice Share of the collateral an expired job costs its node, in bps.
    @return The ratio in bps.
    """
    return self._field(self._cfg, SH_PENALTY, 16)


@view
@external
def unbonding_delay() -> uint256:
    """
    @notice Seconds between an unbond request and its completion.
    @return The delay in seconds.
    """
    return self._field(self._cfg, SH_UNBONDING, 24)


@view
@external
def min_stake() -> uint256:
    """
    @notice Minimum bonded stake of a node that claims or verifies.
    @return The amount.
    """
    return self._field(self._cfg, SH_MIN_STAKE, 120)


@view
@external
def protocol_fees() -> uint256:
    """
    @notice Accrued protocol fee, not yet credited to the fee recipient.
    @return The amount.
    """
    return self._pools & LOW128


@view
@external
def audit_pool() -> uint256:
    """
    @notice Tokens that pay audit verifiers.
    @return The amount.
    """
    return self._pools >> 128


# ---- models ----
@external
def register_model(name: String[64], revision: String[64], manifest_hash: bytes32) -> bytes32:
    """
    @notice Registers an immutable model spec; permissionless (PROTOCOL §3).
    @param name The model name, e.g. "verinfer/tiny-llama".
    @param revision The weights revision.
    @param manifest_hash keccak256 of the manifest of the model's files.
    @return model_id = keccak256(abi_encode(name, revision, manifest_hash)).
    """
    assert len(name) > 0, "market: empty model name"
    assert manifest_hash != empty(bytes32), "market: empty manifest hash"
    model_id: bytes32 = keccak256(abi_encode(name, revision, manifest_hash))
    assert not self.model_registered[model_id], "market: model exists"
    self.model_registered[model_id] = True
    log IMarket.ModelRegistered(
        model_id=model_id, registrant=msg.sender, name=name, revision=revision,
        manifest_hash=manifest_hash,
    )
    return model_id


# ---- nodes and stake ----
@external
def register_node(pubkey: Bytes[64], endpoint: String[256]):
    """
    @notice Registers the caller as a node.
    @param pubkey The node's uncompressed secp256k1 public key (64 bytes, x || y), used
           by clients to encrypt private jobs.
    @param endpoint Where the node can be reached off chain (may be empty).
    """
    assert not self._stakes[msg.sender].registered, "market: node exists"
    assert len(pubkey) == 64, "market: bad pubkey"
    self._stakes[msg.sender].registered = True
    self._profiles[msg.sender] = Profile(pubkey=pubkey, endpoint=endpoint)
    log IMarket.NodeRegistered(node=msg.sender, pubkey=pubkey, endpoint=endpoint)


@external
def update_node(pubkey: Bytes[64], endpoint: String[256]):
    """
    @notice Updates the caller's public key and endpoint.
    @param pubkey The new 64-byte uncompressed secp256k1 public key.
    @param endpoint The new endpoint.
    """
    self._check_node(msg.sender)
    assert len(pubkey) == 64, "market: bad pubkey"
    self._profiles[msg.sender] = Profile(pubkey=pubkey, endpoint=endpoint)
    log IMarket.NodeUpdated(node=msg.sender, pubkey=pubkey, endpoint=endpoint)


@external
def stake(amount: uint256) -> uint256:
    """
    @notice Adds stake; tokens are pulled from the caller (approve the market first).
    @param amount The amount to transfer in.
    @return The amount credited (what arrived, for fee-on-transfer tokens).
    """
    self._check_node(msg.sender)
    assert amount > 0, "market: zero amount"
    received: uint256 = self._pull_tokens(msg.sender, amount)
    bond: uint256 = self._bond[msg.sender]
    new_stake: uint256 = (bond & LOW128) + received
    assert new_stake <= LOW128, "market: stake too large"
    if bond & LOW128 < self._field(self._cfg, SH_MIN_STAKE, 120):
        # below the minimum it was no draw candidate: it becomes one from this block on, so
        # that a top-up after a draw's seed is known cannot make it eligible for that draw
        for model_id: bytes32 in self._node_models[msg.sender]:
            self._serve[model_id][msg.sender] = self._stamp(self._serve[model_id][msg.sender])
    self._bond[msg.sender] = bond + received
    self.total_stake += received
    log IMarket.Staked(node=msg.sender, amount=received, stake=new_stake)
    return received


@external
def unbond(amount: uint256):
    """
    @notice Starts unbonding free stake; it stays slashable until `complete_unbond`. A node
            whose bonded stake falls below `min_stake` leaves every active set.
    @dev A new request adds to the pending amount and restarts the delay.
    @param amount The amount of free (unlocked) stake to unbond.
    """
    self._check_node(msg.sender)
    assert amount > 0, "market: zero amount"
    bond: uint256 = self._bond[msg.sender]
    assert (bond & LOW128) - (bond >> 128) >= amount, "market: amount exceeds free stake"
    ready_at: uint64 = convert(block.timestamp + self._field(self._cfg, SH_UNBONDING, 24), uint64)
    unbonding: uint256 = self._stakes[msg.sender].unbonding + amount
    self._bond[msg.sender] = bond - amount
    self._stakes[msg.sender].unbonding = unbonding
    self._stakes[msg.sender].unbond_ready_at = ready_at
    if (bond & LOW128) - amount < self._field(self._cfg, SH_MIN_STAKE, 120):
        self._unserve_all(msg.sender)
    log IMarket.UnbondRequested(
        node=msg.sender, amount=amount, unbonding=unbonding, ready_at=ready_at
    )


@external
def complete_unbond() -> uint256:
    """
    @notice Moves unbonded stake to the caller's claimable balance once the delay passed
            and no court role of the caller (verifier, panel seat) is still open.
    @return The amount credited.
    """
    amount: uint256 = self._stakes[msg.sender].unbonding
    assert amount > 0, "market: nothing unbonding"
    assert self._holds[msg.sender] == 0, "market: stake held by court"
    assert block.timestamp >= convert(self._stakes[msg.sender].unbond_ready_at, uint256), "market: unbonding not ready"
    self._stakes[msg.sender].unbonding = 0
    self.total_stake -= amount
    self._credit(msg.sender, amount)
    log IMarket.Unbonded(node=msg.sender, amount=amount)
    return amount


@external
def serve_model(model_id: bytes32, price_per_token: uint256):
    """
    @notice Declares that the caller serves `model_id` at `price_per_token`, or updates
            the price; joins the model's active set, which needs `min_stake` bonded.
    @param model_id A registered model id.
    @param price_per_token Token units charged per output token.
    """
    self._check_node(msg.sender)
    assert self.model_registered[model_id], "market: unknown model"
    assert price_per_token < PRICE_LIMIT, "market: price too large"
    assert self._bond[msg.sender] & LOW128 >= self._field(self._cfg, SH_MIN_STAKE, 120), "market: stake too low"
    serve: uint256 = self._serve[model_id][msg.sender]
    if serve == 0:
        assert len(self._model_nodes[model_id]) < MAX_NODES_PER_MODEL, "market: model node set full"
        assert len(self._node_models[msg.sender]) < MAX_MODELS_PER_NODE, "market: node serves too many models"
        self._model_nodes[model_id].append(msg.sender)
        self._node_models[msg.sender].append(model_id)
        serve = self._stamp(len(self._model_nodes[model_id]))
    self._serve[model_id][msg.sender] = (price_per_token << 96) | (serve & (JOINED_MASK | INDEX_MASK))
    log IMarket.ModelServed(node=msg.sender, model_id=model_id, price_per_token=price_per_token)


@external
def stop_serving(model_id: bytes32):
    """
    @notice Leaves the active set of `model_id`.
    @param model_id The model to stop serving.
    """
    assert self._serve[model_id][msg.sender] != 0, "market: model not served"
    self._unserve(msg.sender, model_id)


@external
def remove_node(model_id: bytes32, node: address):
    """
    @notice Removes from the active set of `model_id` a node whose bonded stake is below
            `min_stake` (e.g. after the owner raised it); permissionless.
    @param model_id The model.
    @param node The node to remove.
    """
    assert self._serve[model_id][node] != 0, "market: model not served"
    assert self._bond[node] & LOW128 < self._field(self._cfg, SH_MIN_STAKE, 120), "market: node stake sufficient"
    self._unserve(node, model_id)


@view
@external
def draw_candidates(
    model_id: bytes32, joined_before: uint256, min_stake: uint256
) -> DynArray[address, MAX_NODES_PER_MODEL]:
    """
    @notice The nodes a court draw may pick for `model_id`: in its active set since a block
            before `joined_before`, with bonded stake at least `min_stake`.
    @param model_id The model.
    @param joined_before Only nodes that joined (or last topped up from below the minimum)
           at an earlier block.
    @param min_stake The stake floor (the court passes the minimum as it was at the request).
    @return The candidates, in set order.
    """
    out: DynArray[address, MAX_NODES_PER_MODEL] = []
    for node: address in self._model_nodes[model_id]:
        joined: uint256 = (self._serve[model_id][node] & JOINED_MASK) >> 32
        if joined < joined_before and self._bond[node] & LOW128 >= min_stake:
            out.append(node)
    return out


@view
@external
def node_info(node: address) -> IMarket.NodeInfo:
    """
    @notice Everything known about a node.
    @param node The node address.
    @return The node's registration, stake accounting, public key and endpoint.
    """
    s: Stake = self._stakes[node]
    p: Profile = self._profiles[node]
    bond: uint256 = self._bond[node]
    return IMarket.NodeInfo(
        registered=s.registered, slashed=s.slashed, stake=bond & LOW128, locked=bond >> 128,
        unbonding=s.unbonding, unbond_ready_at=s.unbond_ready_at, pubkey=p.pubkey,
        endpoint=p.endpoint,
    )


@view
@external
def model_nodes(model_id: bytes32) -> DynArray[address, MAX_NODES_PER_MODEL]:
    """
    @notice The active set of a model (nodes that declared they serve it).
    @param model_id The model id.
    @return The node addresses, in set order.
    """
    return self._model_nodes[model_id]


@view
@external
def serve_price(node: address, model_id: bytes32) -> uint256:
    """
    @notice A node's current price per output token for a model.
    @param node The node.
    @param model_id The model.
    @return The price (0 if not served).
    """
    return self._serve[model_id][node] >> 96


@view
@external
def is_serving(node: address, model_id: bytes32) -> bool:
    """
    @notice Whether `node` is in the active set of `model_id`.
    @param node The node.
    @param model_id The model.
    @return True if the node serves the model.
    """
    return self._serve[model_id][node] != 0


@view
@external
def is_eligible(node: address, model_id: bytes32) -> bool:
    """
    @notice Whether `node` may claim or verify jobs of `model_id` now: registered, not
            slashed, serving the model, bonded stake at least `min_stake`.
    @param node The node.
    @param model_id The model.
    @return True if eligible.
    """
    return self._is_eligible(node, model_id)


# ---- balances and pull payments ----
@external
def deposit(amount: uint256) -> uint256:
    """
    @notice Adds to the caller's prepaid balance (approve the market first).
    @param amount The amount to transfer in.
    @return The amount credited (what arrived).
    """
    return self._deposit(msg.sender, amount)


@external
def withdraw_deposit(amount: uint256):
    """
    @notice Takes part of the caller's prepaid balance back.
    @param amount The amount to withdraw.
    """
    assert amount > 0, "market: zero amount"
    bal: uint256 = self.balance_of[msg.sender]
    assert bal >= amount, "market: insufficient balance"
    self.balance_of[msg.sender] = bal - amount
    self._push_tokens(msg.sender, amount)
    log IMarket.DepositWithdrawn(account=msg.sender, amount=amount, balance=bal - amount)


@external
def withdraw() -> uint256:
    """
    @notice Pays out everything credited to the caller (earnings, refunds of bonds,
            rewards, unbonded stake, fees for the fee recipient).
    @return The amount transferred.
    """
    return self._withdraw(msg.sender)


@external
def withdraw_to(recipient: address) -> uint256:
    """
    @notice Pays out everything credited to the caller to `recipient` (an account whose
            own token transfers are blocked, e.g. by a stablecoin's blocklist).
    @param recipient Where the tokens go.
    @return The amount transferred.
    """
    assert recipient != empty(address), "market: zero recipient"
    return self._withdraw(recipient)


# ---- jobs ----
@external
def submit(
    model_id: bytes32,
    input: Bytes[MAX_INPUT_ABI],
    params: Bytes[MAX_PARAMS_ABI],
    max_payment: uint256,
    preferred_node: address,
    claim_deadline: uint64,
    result_deadline: uint64,
) -> uint256:
    """
    @notice Submits a job paid from the caller's prepaid balance; moves no tokens.
    @dev The input lives only in calldata and in the JobSubmitted event.
    @param model_id A registered model.
    @param input Prompt bytes (or ciphertext for a private job), at most 8,000 bytes.
    @param params verinfer.digest.encode_params(...) bytes; the first word is max_tokens.
    @param max_payment The escrow; price = tokens x node price, capped at it.
    @param preferred_node Node with an exclusive claim window, or empty.
    @param claim_deadline Last moment to claim (unix seconds, in the future).
    @param result_deadline Last moment to publish (after claim_deadline).
    @return The job id.
    """
    return self._submit(
        msg.sender, model_id, input, params, max_payment, preferred_node, claim_deadline,
        result_deadline,
    )


@external
def submit_many(
    model_ids: DynArray[bytes32, MAX_SUBMIT_BATCH],
    inputs: DynArray[Bytes[MAX_BATCH_INPUT_ABI], MAX_SUBMIT_BATCH],
    params: DynArray[Bytes[MAX_PARAMS_ABI], MAX_SUBMIT_BATCH],
    max_payments: DynArray[uint256, MAX_SUBMIT_BATCH],
    preferred_nodes: DynArray[address, MAX_SUBMIT_BATCH],
    claim_deadlines: DynArray[uint64, MAX_SUBMIT_BATCH],
    result_deadlines: DynArray[uint64, MAX_SUBMIT_BATCH],
) -> DynArray[uint256, MAX_SUBMIT_BATCH]:
    """
    @notice Submits up to 16 jobs (inputs of at most 2,048 bytes each) in one transaction,
            paid from the caller's prepaid balance; reverts if any of them cannot be.
    @param model_ids Registered models, one per job.
    @param inputs Prompt bytes (or ciphertext), one per job.
    @param params Canonical encoded sampling parameters, one per job.
    @param max_payments The escrow of each job.
    @param preferred_nodes Node with an exclusive claim window, or empty, per job.
    @param claim_deadlines Last moment to claim, per job.
    @param result_deadlines Last moment to publish, per job.
    @return The job ids, in order (consecutive).
    """
    n: uint256 = len(model_ids)
    assert (
        len(inputs) == n and len(params) == n and len(max_payments) == n
        and len(preferred_nodes) == n and len(claim_deadlines) == n
        and len(result_deadlines) == n
    ), "market: length mismatch"
    ids: DynArray[uint256, MAX_SUBMIT_BATCH] = []
    for i: uint256 in range(n, bound=MAX_SUBMIT_BATCH):
        ids.append(
            self._submit(
                msg.sender, model_ids[i], inputs[i], params[i], max_payments[i],
                preferred_nodes[i], claim_deadlines[i], result_deadlines[i],
            )
        )
    return ids


@external
def deposit_and_submit(
    amount: uint256,
    model_id: bytes32,
    input: Bytes[MAX_INPUT_ABI],
    params: Bytes[MAX_PARAMS_ABI],
    max_payment: uint256,
    preferred_node: address,
    claim_deadline: uint64,
    result_deadline: uint64,
) -> uint256:
    """
    @notice Deposits `amount` and submits a job in one transaction (one-off clients).
    @param amount Tokens to pull into the caller's balance first.
    @param model_id A registered model.
    @param input Prompt bytes (or ciphertext), at most 8,000 bytes.
    @param params Canonical encoded sampling parameters.
    @param max_payment The escrow.
    @param preferred_node Node with an exclusive claim window, or empty.
    @param claim_deadline Last moment to claim.
    @param result_deadline Last moment to publish.
    @return The job id.
    """
    self._deposit(msg.sender, amount)
    return self._submit(
        msg.sender, model_id, input, params, max_payment, preferred_node, claim_deadline,
        result_deadline,
    )


@external
def claim(job_id: uint256, job: IMarket.Job):
    """
    @notice Claims an open job: the caller must serve the model with enough free stake;
            `collateral_bps` of the max payment is locked from its stake.
    @param job_id The job id.
    @param job The job's fields as last emitted.
    """
    self._check_job(job_id, job, OPEN, "market: job not open")
    j: IMarket.Job = self._claim(job_id, job)
    self._jobs[job_id] = self._hash(j) | CLAIMED


@external
def publish(
    job_id: uint256,
    job: IMarket.Job,
    output: Bytes[MAX_OUTPUT_ABI],
    output_tokens: uint32,
    finish_reason: uint8,
    result_digest: bytes32,
):
    """
    @notice Publishes the result of a claimed job; opens the challenge window.
    @param job_id The job id.
    @param job The job's fields as last emitted.
    @param output Packed big-endian uint32 token ids, or their ciphertext.
    @param output_tokens Number of output tokens (priced).
    @param finish_reason 0 stop, 1 length.
    @param result_digest The PROTOCOL §5 digest over the plaintext tokens.
    """
    self._check_job(job_id, job, CLAIMED, "market: job not claimed")
    self._publish(job_id, job, output, output_tokens, finish_reason, result_digest)


@external
def claim_and_publish(
    job_id: uint256,
    job: IMarket.Job,
    output: Bytes[MAX_OUTPUT_ABI],
    output_tokens: uint32,
    finish_reason: uint8,
    result_digest: bytes32,
):
    """
    @notice Claims an open job and publishes its result in one transaction (a node that
            ran a job targeted at it saves a transaction).
    @param job_id The job id.
    @param job The job's fields as submitted.
    @param output Packed token ids or their ciphertext.
    @param output_tokens Number of output tokens.
    @param finish_reason 0 stop, 1 length.
    @param result_digest The §5 digest.
    """
    self._check_job(job_id, job, OPEN, "market: job not open")
    self._publish(job_id, self._claim(job_id, job), output, output_tokens, finish_reason, result_digest)


@external
def publish_many(
    job_ids: DynArray[uint256, MAX_PUBLISH_BATCH],
    jobs: DynArray[IMarket.Job, MAX_PUBLISH_BATCH],
    outputs: DynArray[Bytes[MAX_BATCH_OUTPUT_ABI], MAX_PUBLISH_BATCH],
    output_tokens: DynArray[uint32, MAX_PUBLISH_BATCH],
    finish_reasons: DynArray[uint8, MAX_PUBLISH_BATCH],
    result_digests: DynArray[bytes32, MAX_PUBLISH_BATCH],
):
    """
    @notice Publishes several results in one transaction, claiming first each job that is
            still open (as `claim_and_publish`) and publishing each job the caller already
            claimed (as `publish`). Reverts if any of them cannot be.
    @param job_ids The job ids.
    @param jobs Their fields as last emitted, in the same order.
    @param outputs Packed token ids or their ciphertext, at most 512 tokens each.
    @param output_tokens Number of output tokens of each.
    @param finish_reasons 0 stop, 1 length, of each.
    @param result_digests The §5 digest of each.
    """
    n: uint256 = len(job_ids)
    assert (
        len(jobs) == n and len(outputs) == n and len(output_tokens) == n
        and len(finish_reasons) == n and len(result_digests) == n
    ), "market: length mismatch"
    for i: uint256 in range(n, bound=MAX_PUBLISH_BATCH):
        job_id: uint256 = job_ids[i]
        j: IMarket.Job = jobs[i]
        status: uint256 = self._jobs[job_id] & STATUS_MASK
        if status == OPEN:
            self._check_job(job_id, j, OPEN, "market: job not open")
            j = self._claim(job_id, j)
        else:
            self._check_job(job_id, j, CLAIMED, "market: job not claimed")
        self._publish(job_id, j, outputs[i], output_tokens[i], finish_reasons[i], result_digests[i])


@external
def finalize(job_id: uint256, settlement: IMarket.Settlement):
    """
    @notice Pays a published job once its challenge window has passed; permissionless.
    @param job_id The job id.
    @param settlement The job's Settlement (its payment fields and the hash of the rest;
           `settlement_of` computes it from the Job).
    """
    self._finalize(job_id, settlement)


@external
def finalize_many(
    job_ids: DynArray[uint256, MAX_BATCH], settlements: DynArray[IMarket.Settlement, MAX_BATCH]
):
    """
    @notice Finalizes several jobs in one transaction; reverts if any cannot be.
    @param job_ids The job ids.
    @param settlements Their Settlements, in the same order.
    """
    assert len(job_ids) == len(settlements), "market: length mismatch"
    for i: uint256 in range(len(job_ids), bound=MAX_BATCH):
        self._finalize(job_ids[i], settlements[i])


@external
def expire(job_id: uint256, job: IMarket.Job):
    """
    @notice Ends a claimed job whose result deadline passed without a result; the client
            is refunded and compensated with `expire_penalty_bps` of the collateral.
    @param job_id The job id.
    @param job The job's fields as last emitted.
    """
    self._check_job(job_id, job, CLAIMED, "market: job not claimed")
    assert block.timestamp > convert(job.result_deadline, uint256), "market: result deadline not passed"
    node: address = job.node
    bond: uint256 = self._bond[node]
    locked: uint256 = bond >> 128
    stake: uint256 = bond & LOW128
    penalty: uint256 = min(job.collateral * self._field(self._cfg, SH_PENALTY, 16) // MAX_BPS, stake)
    self._bond[node] = ((locked - min(locked, job.collateral)) << 128) | (stake - penalty)
    if penalty > 0:
        self.total_stake -= penalty
        log IMarket.NodeSlashed(node=node, job_id=job_id, amount=penalty, whole_stake=False)
        if stake - penalty < self._field(self._cfg, SH_MIN_STAKE, 120):
            self._unserve_all(node)
    refund: uint256 = job.max_payment + penalty
    self.balance_of[job.client] += refund
    self._set_status(job_id, EXPIRED)
    log IMarket.JobExpired(job_id=job_id, node=node, refund=refund, penalty=penalty)


@external
def cancel(job_id: uint256, job: IMarket.Job):
    """
    @notice Cancels an open job: by its client at any time, by anyone after the claim
            deadline. The escrow returns to the client's balance.
    @param job_id The job id.
    @param job The job's fields as submitted.
    """
    self._check_job(job_id, job, OPEN, "market: job not open")
    assert msg.sender == job.client or block.timestamp > convert(job.claim_deadline, uint256), "market: claim deadline not passed"
    self.balance_of[job.client] += job.max_payment
    self._set_status(job_id, CANCELLED)
    log IMarket.JobCancelled(job_id=job_id, refund=job.max_payment)


@view
@external
def job_status(job_id: uint256) -> uint8:
    """
    @notice The status of a job (0 none .. 8 slashed). A finalized job's word is deleted
            (its gas refund pays for part of the finalization), so an id that was issued and
            has no word is FINALIZED.
    @param job_id The job id.
    @return The status.
    """
    word: uint256 = self._jobs[job_id]
    if word == 0 and job_id != 0 and job_id < self.next_job_id:
        return convert(FINALIZED, uint8)
    return convert(word & STATUS_MASK, uint8)


@view
@external
def job_hash(job_id: uint256) -> bytes32:
    """
    @notice The stored hash of a job's fields (low byte cleared); zero once it is
            finalized (the word is deleted then) or if the id was never issued.
    @param job_id The job id.
    @return The hash.
    """
    return convert(self._jobs[job_id] & HASH_MASK, bytes32)


@pure
@external
def hash_job(job: IMarket.Job) -> bytes32:
    """
    @notice keccak256(abi_encode(settlement_of(job))) with the low byte cleared, as stored.
    @param job The job fields.
    @return The hash.
    """
    return convert(self._hash(job), bytes32)


@pure
@external
def settlement_of(job: IMarket.Job) -> IMarket.Settlement:
    """
    @notice The Settlement that finalize takes for a job.
    @param job The job fields.
    @return The job's payment fields and the hash of the rest.
    """
    return self._settlement(job)


# ---- court hooks ----
@external
def court_open(job_id: uint256, job: IMarket.Job, payer: address, bond: uint256):
    """
    @notice Court only: moves a published job inside its challenge window to VERIFYING,
            taking `bond` from `payer`'s prepaid balance into the court funds.
    @param job_id The job id.
    @param job The job's fields as last emitted.
    @param payer The challenger (or the keeper starting an audit, with bond 0).
    @param bond The dispute bond.
    """
    self._only_court()
    self._check_job(job_id, job, PUBLISHED, "market: job not published")
    assert block.timestamp <= convert(job.published_at, uint256) + self._field(self._cfg, SH_CHALLENGE, 24), "market: challenge window closed"
    if bond > 0:
        self._take_bond(payer, bond)
    self._set_status(job_id, VERIFYING)
    log IMarket.JobVerifying(job_id=job_id, payer=payer, bond=bond)


@external
def court_take_bond(payer: address, amount: uint256):
    """
    @notice Court only: moves `amount` from `payer`'s balance into the court funds
            (appeal bonds).
    @param payer The account posting the bond.
    @param amount The bond.
    """
    self._only_court()
    self._take_bond(payer, amount)


@external
def court_resolve(job_id: uint256, job: IMarket.Job, valid: bool) -> uint256:
    """
    @notice Court only: settles a verified job. Valid: paid as in finalize. Invalid: the
            client is refunded in full and the node's whole stake moves to the court funds.
    @param job_id The job id.
    @param job The job's fields as last emitted.
    @param valid The final verdict.
    @return The amount slashed (0 when valid).
    """
    self._only_court()
    self._check_job(job_id, job, VERIFYING, "market: job not verifying")
    if valid:
        self._pay(job_id, self._settlement(job), self._cfg)
        return 0
    self.balance_of[job.client] += job.max_payment
    slashed: uint256 = self._slash(job.node, max_value(uint256), job_id)
    self._set_status(job_id, SLASHED)
    log IMarket.JobSlashed(job_id=job_id, node=job.node, refund=job.max_payment, slashed=slashed)
    return slashed


@external
def court_slash(node: address, amount: uint256, job_id: uint256) -> uint256:
    """
    @notice Court only: slashes a verifier. `max_value(uint256)` takes the whole stake and
            deactivates the node; a smaller amount takes at most the free and unbonding stake.
    @param node The node to slash.
    @param amount The penalty.
    @param job_id The job the penalty relates to (for the event).
    @return The amount moved into the court funds.
    """
    self._only_court()
    return self._slash(node, amount, job_id)


@external
def court_hold(node: address, held: bool):
    """
    @notice Court only: opens (`held`) or closes a court role of `node`; while any is open
            its stake cannot leave through `complete_unbond`.
    @param node The verifier or panel member.
    @param held True when the role opens, False when it closes.
    """
    self._only_court()
    if held:
        self._holds[node] += 1
    else:
        self._holds[node] -= 1


@external
def court_pay(account: address, amount: uint256):
    """
    @notice Court only: pays `amount` of the court funds to `account`'s claimable balance,
            or, with `account` empty, moves it into the audit pool (undistributed slash,
            no-show penalties).
    @param account The receiver, or empty for the audit pool.
    @param amount The amount.
    """
    self._only_court()
    assert self.court_funds >= amount, "market: court funds short"
    self.court_funds -= amount
    if account == empty(address):
        self._add_pools(0, amount)
    else:
        self._credit(account, amount)


@external
def court_pay_from_audit_pool(account: address, amount: uint256) -> uint256:
    """
    @notice Court only: pays an audit verifier from the audit pool, at most what it holds.
    @param account The receiver.
    @param amount The amount asked.
    @return The amount paid.
    """
    self._only_court()
    pools: uint256 = self._pools
    paid: uint256 = min(amount, pools >> 128)
    if paid > 0:
        self._pools = pools - (paid << 128)
        self._credit(account, paid)
    return paid


# ---- internal: jobs ----
@pure
@internal
def _rest_hash(job: IMarket.Job) -> bytes32:
    """The hash of the job's fields that are not in its Settlement."""
    return keccak256(
        abi_encode(
            job.model_id,
            job.input_hash,
            job.params_hash,
            job.max_tokens,
            job.preferred_node,
            job.submitted_at,
            job.claim_deadline,
            job.result_deadline,
            job.finish_reason,
            job.result_digest,
            job.published_block,
        )
    )


@pure
@internal
def _settlement(job: IMarket.Job) -> IMarket.Settlement:
    return IMarket.Settlement(
        client=job.client,
        max_payment=job.max_payment,
        node=job.node,
        price_per_token=job.price_per_token,
        collateral=job.collateral,
        output_tokens=job.output_tokens,
        published_at=job.published_at,
        rest_hash=self._rest_hash(job),
    )


@pure
@internal
def _hash_settlement(settlement: IMarket.Settlement) -> uint256:
    return convert(keccak256(abi_encode(settlement)), uint256) & HASH_MASK


@pure
@internal
def _hash(job: IMarket.Job) -> uint256:
    """Two-level: the hash of the job's Settlement (payment fields + hash of the rest);
    `_hash_settlement(_settlement(job))`, without building the struct."""
    return convert(
        keccak256(
            abi_encode(
                job.client,
                job.max_payment,
                job.node,
                job.price_per_token,
                job.collateral,
                job.output_tokens,
                job.published_at,
                self._rest_hash(job),
            )
        ),
        uint256,
    ) & HASH_MASK


@view
@internal
def _check_word(job_id: uint256, hash: uint256, status: uint256, reason: String[32]):
    word: uint256 = self._jobs[job_id]
    if word & STATUS_MASK != status:
        raise reason
    assert word & HASH_MASK == hash, "market: job fields mismatch"


@view
@internal
def _check_job(job_id: uint256, job: IMarket.Job, status: uint256, reason: String[32]):
    self._check_word(job_id, self._hash(job), status, reason)


@internal
def _set_status(job_id: uint256, status: uint256):
    self._jobs[job_id] = (self._jobs[job_id] & HASH_MASK) | status


@internal
def _submit(
    client: address,
    model_id: bytes32,
    input: Bytes[MAX_INPUT_ABI],
    params: Bytes[MAX_PARAMS_ABI],
    max_payment: uint256,
    preferred_node: address,
    claim_deadline: uint64,
    result_deadline: uint64,
) -> uint256:
    """Checks and records a submission and logs JobSubmitted; returns the job id."""
    input_len: uint256 = len(input)
    assert max_payment > 0, "market: zero payment"
    assert self.model_registered[model_id], "market: unknown model"
    assert input_len > 0, "market: empty input"
    assert input_len <= MAX_INPUT_BYTES, "market: input too large"
    assert len(params) >= MIN_PARAMS_BYTES, "market: bad params"
    max_tokens: uint256 = convert(extract32(params, 0), uint256)
    assert max_tokens > 0 and max_tokens <= MAX_OUTPUT_TOKENS, "market: bad max tokens"
    assert convert(claim_deadline, uint256) > block.timestamp, "market: claim deadline in past"
    assert result_deadline > claim_deadline, "market: result deadline before claim deadline"
    assert convert(result_deadline, uint256) <= block.timestamp + MAX_JOB_DURATION, "market: deadline too far"
    bal: uint256 = self.balance_of[client]
    assert bal >= max_payment, "market: insufficient balance"
    self.balance_of[client] = bal - max_payment
    job_id: uint256 = self.next_job_id
    self.next_job_id = job_id + 1
    job: IMarket.Job = empty(IMarket.Job)
    job.client = client
    job.model_id = model_id
    job.input_hash = keccak256(input)
    job.params_hash = keccak256(params)
    job.max_tokens = convert(max_tokens, uint32)
    job.max_payment = max_payment
    job.preferred_node = preferred_node
    job.submitted_at = convert(block.timestamp, uint64)
    if convert(slice(input, 0, 1), bytes1) == PRIVATE_FORMAT:
        job.submitted_at |= PRIVATE_FLAG
    job.claim_deadline = claim_deadline
    job.result_deadline = result_deadline
    self._jobs[job_id] = self._hash(job) | OPEN
    log IMarket.JobSubmitted(
        job_id=job_id, client=client, model_id=model_id, input=input, params=params,
        max_tokens=job.max_tokens, max_payment=max_payment, preferred_node=preferred_node,
        submitted_at=job.submitted_at, claim_deadline=claim_deadline,
        result_deadline=result_deadline,
    )
    return job_id


@internal
def _claim(job_id: uint256, job: IMarket.Job) -> IMarket.Job:
    assert block.timestamp <= convert(job.claim_deadline, uint256), "market: claim deadline passed"
    cfg: uint256 = self._cfg
    if job.preferred_node != empty(address) and msg.sender != job.preferred_node:
        assert block.timestamp >= convert(job.submitted_at, uint256) + self._field(cfg, SH_EXCLUSIVE, 16), "market: reserved for preferred node"
    serve: uint256 = self._serve[job.model_id][msg.sender]
    if serve == 0:
        # serving implies registered and not slashed (a slash unserves every model)
        self._check_node(msg.sender)
        raise "market: model not served"
    bond: uint256 = self._bond[msg.sender]
    stake: uint256 = bond & LOW128
    assert stake >= self._field(cfg, SH_MIN_STAKE, 120), "market: stake too low"
    collateral: uint256 = job.max_payment * self._field(cfg, SH_COLLATERAL, 24) // MAX_BPS
    assert stake - (bond >> 128) >= collateral, "market: free stake too low"
    self._bond[msg.sender] = bond + (collateral << 128)
    j: IMarket.Job = job
    j.node = msg.sender
    j.price_per_token = serve >> 96
    j.collateral = collateral
    log IMarket.JobClaimed(
        job_id=job_id, node=msg.sender, price_per_token=j.price_per_token, collateral=collateral
    )
    return j


@internal
def _publish(
    job_id: uint256,
    job: IMarket.Job,
    output: Bytes[MAX_OUTPUT_ABI],
    output_tokens: uint32,
    finish_reason: uint8,
    result_digest: bytes32,
):
    """Records a claimed job's result (the caller checked the job word) and logs it."""
    assert msg.sender == job.node, "market: not the claimant"
    assert not self._stakes[msg.sender].slashed, "market: node slashed"
    assert block.timestamp <= convert(job.result_deadline, uint256), "market: result deadline passed"
    assert output_tokens <= job.max_tokens, "market: too many output tokens"
    assert finish_reason <= 1, "market: bad finish reason"
    assert result_digest != empty(bytes32), "market: empty digest"
    j: IMarket.Job = job
    j.output_tokens = output_tokens
    j.finish_reason = finish_reason
    j.result_digest = result_digest
    j.published_at = convert(block.timestamp, uint64)
    j.published_block = convert(block.number, uint64)
    self._jobs[job_id] = self._hash(j) | PUBLISHED
    log IMarket.ResultPublished(
        job_id=job_id, node=msg.sender, output=output, output_tokens=output_tokens,
        finish_reason=finish_reason, result_digest=result_digest, published_at=j.published_at,
        published_block=j.published_block,
    )


@internal
def _finalize(job_id: uint256, job: IMarket.Settlement):
    self._check_word(job_id, self._hash_settlement(job), PUBLISHED, "market: job not published")
    cfg: uint256 = self._cfg
    assert block.timestamp > convert(job.published_at, uint256) + self._field(cfg, SH_CHALLENGE, 24), "market: challenge window open"
    self._pay(job_id, job, cfg)


@internal
def _pay(job_id: uint256, job: IMarket.Settlement, cfg: uint256):
    """Pays a job whose result stands: node earns, client gets the rest back."""
    price: uint256 = min(convert(job.output_tokens, uint256) * job.price_per_token, job.max_payment)
    fee: uint256 = price * self._field(cfg, SH_FEE, 16) // MAX_BPS
    audit_share: uint256 = price * self._field(cfg, SH_AUDIT, 16) // MAX_BPS
    earned: uint256 = price - fee - audit_share
    refund: uint256 = job.max_payment - price
    node: address = job.node
    self._unlock(node, job.collateral)
    if earned > 0:
        self.claimable[node] += earned
    if refund > 0:
        self.balance_of[job.client] += refund
    if fee + audit_share > 0:
        self._add_pools(fee, audit_share)
    # terminal for good: delete the word (refund) instead of storing FINALIZED; job_status
    # reports an issued id without a word as FINALIZED, and no transition accepts status 0
    self._jobs[job_id] = 0
    log IMarket.JobFinalized(
        job_id=job_id, node=node, payment=earned, refund=refund, fee=fee, audit_share=audit_share
    )


# ---- internal: nodes ----
@view
@internal
def _check_node(node: address):
    assert self._stakes[node].registered, "market: not a node"
    assert not self._stakes[node].slashed, "market: node slashed"


@view
@internal
def _is_eligible(node: address, model_id: bytes32) -> bool:
    # serving implies registered and not slashed (a slash unserves every model)
    return (
        self._serve[model_id][node] != 0
        and self._bond[node] & LOW128 >= self._field(self._cfg, SH_MIN_STAKE, 120)
    )


@internal
def _unlock(node: address, collateral: uint256):
    """Releases a job's collateral (a slashed node's locks were already zeroed)."""
    bond: uint256 = self._bond[node]
    self._bond[node] = bond - (min(bond >> 128, collateral) << 128)


@internal
def _add_pools(fee: uint256, audit_share: uint256):
    pools: uint256 = self._pools
    fees: uint256 = (pools & LOW128) + fee
    audit: uint256 = (pools >> 128) + audit_share
    assert fees <= LOW128 and audit <= LOW128, "market: pool overflow"
    self._pools = (audit << 128) | fees


@pure
@internal
def _field(word: uint256, offset: uint256, width: uint256) -> uint256:
    return (word >> offset) & ((1 << width) - 1)


@internal
def _unserve(node: address, model_id: bytes32):
    idx: uint256 = self._serve[model_id][node] & INDEX_MASK
    last: address = self._model_nodes[model_id].pop()
    if last != node:
        self._model_nodes[model_id][idx - 1] = last
        last_serve: uint256 = self._serve[model_id][last]
        self._serve[model_id][last] = (last_serve - (last_serve & INDEX_MASK)) | idx
    self._serve[model_id][node] = 0
    models: DynArray[bytes32, MAX_MODELS_PER_NODE] = self._node_models[node]
    for i: uint256 in range(len(models), bound=MAX_MODELS_PER_NODE):
        if models[i] == model_id:
            models[i] = models[len(models) - 1]
            models.pop()
            break
    self._node_models[node] = models
    log IMarket.ModelUnserved(node=node, model_id=model_id)


@internal
def _unserve_all(node: address):
    served: DynArray[bytes32, MAX_MODELS_PER_NODE] = self._node_models[node]
    for model_id: bytes32 in served:
        self._unserve(node, model_id)


@view
@internal
def _stamp(serve: uint256) -> uint256:
    """`serve` with its joined block set to this block."""
    return (serve & ~JOINED_MASK) | (block.number << 32)


@internal
def _slash(node: address, amount: uint256, job_id: uint256) -> uint256:
    s: Stake = self._stakes[node]
    bond: uint256 = self._bond[node]
    stake: uint256 = bond & LOW128
    taken: uint256 = 0
    whole: bool = amount == max_value(uint256)
    if whole:
        taken = stake + s.unbonding
        self._bond[node] = 0
        self._stakes[node].unbonding = 0
        self._stakes[node].slashed = True
        self._unserve_all(node)
    else:
        # free stake first, then unbonding, then the collateral locked by its live jobs
        locked: uint256 = bond >> 128
        from_free: uint256 = min(amount, stake - locked)
        from_unbonding: uint256 = min(amount - from_free, s.unbonding)
        from_locked: uint256 = min(amount - from_free - from_unbonding, locked)
        taken = from_free + from_unbonding + from_locked
        self._bond[node] = ((locked - from_locked) << 128) | (stake - from_free - from_locked)
        self._stakes[node].unbonding = s.unbonding - from_unbonding
        if stake - from_free - from_locked < self._field(self._cfg, SH_MIN_STAKE, 120):
            self._unserve_all(node)
    self.total_stake -= taken
    self.court_funds += taken
    log IMarket.NodeSlashed(node=node, job_id=job_id, amount=taken, whole_stake=whole)
    return taken


# ---- internal: money ----
@view
@internal
def _only_court():
    assert msg.sender == self.court, "market: not the court"


@internal
def _take_bond(payer: address, amount: uint256):
    bal: uint256 = self.balance_of[payer]
    assert bal >= amount, "market: insufficient balance for bond"
    self.balance_of[payer] = bal - amount
    self.court_funds += amount


@internal
def _credit(account: address, amount: uint256):
    self.claimable[account] += amount
    log IMarket.Credited(account=account, amount=amount)


@internal
def _deposit(account: address, amount: uint256) -> uint256:
    assert amount > 0, "market: zero amount"
    received: uint256 = self._pull_tokens(account, amount)
    bal: uint256 = self.balance_of[account] + received
    self.balance_of[account] = bal
    log IMarket.Deposited(account=account, amount=received, balance=bal)
    return received


@internal
def _withdraw(recipient: address) -> uint256:
    amount: uint256 = self.claimable[msg.sender]
    assert amount > 0, "market: nothing to withdraw"
    self.claimable[msg.sender] = 0
    self._push_tokens(recipient, amount)
    log IMarket.Withdrawn(account=msg.sender, amount=amount)
    return amount


@internal
def _pull_tokens(src: address, amount: uint256) -> uint256:
    """Pulls `amount` from `src`; returns what actually arrived (fee-on-transfer safe)."""
    before: uint256 = staticcall IERC20(token).balanceOf(self)
    ok: bool = extcall IERC20(token).transferFrom(src, self, amount, default_return_value=True)
    assert ok, "market: transferFrom failed"
    received: uint256 = staticcall IERC20(token).balanceOf(self) - before
    assert received > 0, "market: nothing received"
    return received


@internal
def _push_tokens(to: address, amount: uint256):
    ok: bool = extcall IERC20(token).transfer(to, amount, default_return_value=True)
    assert ok, "market: transfer failed"
