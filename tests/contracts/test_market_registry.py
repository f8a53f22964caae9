"""Market: owner parameters, model registry, node registry and stake, balances, withdraw."""

import ape
import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak
from verinfer.digest import model_id as digest_model_id
from web3.exceptions import ContractLogicError as Web3LogicError

from tests.contracts.conftest import MIN_STAKE, MODEL, MODEL_ID, PRICE, PUBKEY, UNIT, ZERO


# ---- deployment and owner ----
def test_deploy__sets_defaults_and_owner(market, token, owner, fee_recipient):
    assert market.token() == token.address
    assert market.owner() == owner
    assert market.fee_recipient() == fee_recipient
    assert market.min_stake() == MIN_STAKE
    assert (market.fee_bps(), market.audit_share_bps(), market.collateral_bps()) == (
        100,
        200,
        250_000,
    )
    assert market.court() == ZERO
    assert market.next_job_id() == 1


def test_deploy__when_min_stake_zero__reverts(deploy_market, token):
    with ape.reverts("market: param out of bounds"):
        deploy_market(token, 0)


def test_set_param__by_owner__updates_and_logs(market, owner):
    tx = market.set_param(2, 7_200, sender=owner)
    assert market.challenge_window() == 7_200
    [log] = tx.decode_logs(market.ParamChanged)
    assert (log.param, log.old_value, log.new_value) == (2, 3_600, 7_200)


@pytest.mark.parametrize(
    ("param", "bad"),
    [
        (0, 1_001),
        (1, 2_001),
        (2, 59),
        (2, 7 * 86_400 + 1),
        (3, 3_601),
        (4, 0),
        (5, 9_999),
        (5, 1_000_001),
        (6, 10_001),
        (7, 3_599),
        (7, 30 * 86_400 + 1),
    ],
)
def test_set_param__when_out_of_bounds__reverts(market, owner, param, bad):
    with ape.reverts("market: param out of bounds"):
        market.set_param(param, bad, sender=owner)


def test_set_param__when_unknown__reverts(market, owner):
    with ape.reverts("market: unknown param"):
        market.set_param(8, 1, sender=owner)


def test_set_param__by_non_owner__reverts(market, client):
    with ape.reverts("ownable: caller is not the owner"):
        market.set_param(0, 10, sender=client)


def test_set_court__twice__reverts(project, market, deploy_token, deploy_market, owner):
    first = project.Court.deploy(market, 100, 300, 20, 50, 5, sender=owner)
    second = project.Court.deploy(market, 100, 300, 20, 50, 5, sender=owner)
    tx = market.set_court(first, sender=owner)
    assert market.court() == first
    [log] = tx.decode_logs(market.CourtSet)
    assert log.court == first
    with ape.reverts("market: court already set"):
        market.set_court(second, sender=owner)


def test_set_court__court_of_another_market__reverts(
    project, market, deploy_token, deploy_market, owner
):
    other = deploy_market(deploy_token())
    foreign = project.Court.deploy(other, 100, 300, 20, 50, 5, sender=owner)
    with ape.reverts("market: court of another market"):
        market.set_court(foreign, sender=owner)
    assert market.court() == ZERO


def test_set_court__zero__reverts(market, owner):
    with ape.reverts("market: zero court"):
        market.set_court(ZERO, sender=owner)


def test_set_fee_recipient__updates_and_rejects_zero(market, owner, keeper):
    tx = market.set_fee_recipient(keeper, sender=owner)
    assert market.fee_recipient() == keeper
    [log] = tx.decode_logs(market.FeeRecipientSet)
    assert log.recipient == keeper
    with ape.reverts("market: zero fee recipient"):
        market.set_fee_recipient(ZERO, sender=owner)


def test_withdraw_fees__when_none__reverts(market, owner):
    with ape.reverts("market: no fees"):
        market.withdraw_fees(sender=owner)


def test_two_step_ownership__transfers_after_accept(market, owner, keeper):
    tx = market.transfer_ownership(keeper, sender=owner)
    assert market.owner() == owner
    assert market.pending_owner() == keeper
    [started] = tx.decode_logs(market.OwnershipTransferStarted)
    assert (started.previous_owner, started.new_owner) == (owner, keeper)
    tx = market.accept_ownership(sender=keeper)
    assert market.owner() == keeper
    [done] = tx.decode_logs(market.OwnershipTransferred)
    assert (done.previous_owner, done.new_owner) == (owner, keeper)
    with ape.reverts("ownable: caller is not the owner"):
        market.set_param(0, 10, sender=owner)


# ---- models ----
def test_register_model__id_matches_digest_and_logs(market, client):
    tx = market.register_model(*MODEL, sender=client)
    assert market.model_registered(MODEL_ID)
    assert digest_model_id(*MODEL) == MODEL_ID
    [log] = tx.decode_logs(market.ModelRegistered)
    assert bytes(log.model_id) == MODEL_ID
    assert (log.registrant, log.name, log.revision) == (client, MODEL[0], MODEL[1])
    assert bytes(log.manifest_hash) == MODEL[2]


def test_register_model__twice__reverts(market, client, registered_model):
    with ape.reverts("market: model exists"):
        market.register_model(*MODEL, sender=client)


def test_register_model__empty_name__reverts(market, client):
    with ape.reverts("market: empty model name"):
        market.register_model("", "r", keccak(b"m"), sender=client)


def test_register_model__empty_manifest__reverts(market, client):
    with ape.reverts("market: empty manifest hash"):
        market.register_model("m", "r", b"\x00" * 32, sender=client)


# ---- nodes ----
def test_register_node__stores_profile_and_logs(market, node_op):
    tx = market.register_node(PUBKEY, "http://node", sender=node_op)
    info = market.node_info(node_op)
    assert info.registered and not info.slashed
    assert bytes(info.pubkey) == PUBKEY and info.endpoint == "http://node"
    [log] = tx.decode_logs(market.NodeRegistered)
    assert (log.node, bytes(log.pubkey), log.endpoint) == (node_op, PUBKEY, "http://node")


def test_register_node__twice__reverts(market, node_op):
    market.register_node(PUBKEY, "", sender=node_op)
    with ape.reverts("market: node exists"):
        market.register_node(PUBKEY, "", sender=node_op)


def test_register_node__compressed_key__reverts(market, node_op):
    with ape.reverts("market: bad pubkey"):
        market.register_node(PUBKEY[:33], "", sender=node_op)


def test_update_node__changes_profile_and_logs(market, node_op):
    market.register_node(PUBKEY, "a", sender=node_op)
    new_key = bytes(reversed(PUBKEY))
    tx = market.update_node(new_key, "b", sender=node_op)
    info = market.node_info(node_op)
    assert bytes(info.pubkey) == new_key and info.endpoint == "b"
    [log] = tx.decode_logs(market.NodeUpdated)
    assert (log.node, log.endpoint) == (node_op, "b")


def test_update_node__by_stranger__reverts(market, keeper):
    with ape.reverts("market: not a node"):
        market.update_node(PUBKEY, "x", sender=keeper)


def test_stake__pulls_tokens_and_logs(market, token, fund, node_op):
    fund(node_op, 5 * UNIT)
    market.register_node(PUBKEY, "", sender=node_op)
    tx = market.stake(5 * UNIT, sender=node_op)
    assert market.node_info(node_op).stake == 5 * UNIT
    assert market.total_stake() == 5 * UNIT
    assert token.balanceOf(market) == 5 * UNIT
    [log] = tx.decode_logs(market.Staked)
    assert (log.node, log.amount, log.stake) == (node_op, 5 * UNIT, 5 * UNIT)


def test_stake__by_non_node__reverts(market, fund, keeper):
    fund(keeper, UNIT)
    with ape.reverts("market: not a node"):
        market.stake(UNIT, sender=keeper)


def test_stake__zero__reverts(market, node_op):
    market.register_node(PUBKEY, "", sender=node_op)
    with ape.reverts("market: zero amount"):
        market.stake(0, sender=node_op)


def test_unbond__moves_free_stake_after_delay(market, staked_node, chain):
    tx = market.unbond(MIN_STAKE, sender=staked_node)
    info = market.node_info(staked_node)
    assert (info.stake, info.unbonding) == (MIN_STAKE, MIN_STAKE)
    assert market.total_stake() == 2 * MIN_STAKE  # unbonding stays accounted and slashable
    [log] = tx.decode_logs(market.UnbondRequested)
    assert (log.node, log.amount, log.unbonding) == (staked_node, MIN_STAKE, MIN_STAKE)
    assert log.ready_at == info.unbond_ready_at
    with ape.reverts("market: unbonding not ready"):
        market.complete_unbond(sender=staked_node)
    chain.pending_timestamp = info.unbond_ready_at
    tx = market.complete_unbond(sender=staked_node)
    assert market.node_info(staked_node).unbonding == 0
    assert market.claimable(staked_node) == MIN_STAKE
    assert market.total_stake() == MIN_STAKE
    [log] = tx.decode_logs(market.Unbonded)
    assert (log.node, log.amount) == (staked_node, MIN_STAKE)


def test_unbond__more_than_free__reverts(market, staked_node):
    with ape.reverts("market: amount exceeds free stake"):
        market.unbond(2 * MIN_STAKE + 1, sender=staked_node)


def test_unbond__zero__reverts(market, staked_node):
    with ape.reverts("market: zero amount"):
        market.unbond(0, sender=staked_node)


def test_complete_unbond__when_nothing__reverts(market, staked_node):
    with ape.reverts("market: nothing unbonding"):
        market.complete_unbond(sender=staked_node)


def test_serve_model__joins_active_set_and_logs(market, fund, node_op, registered_model, chain):
    fund(node_op, MIN_STAKE)
    market.register_node(PUBKEY, "", sender=node_op)
    market.stake(MIN_STAKE, sender=node_op)
    tx = market.serve_model(registered_model, PRICE, sender=node_op)
    assert market.model_nodes(registered_model) == [node_op]
    assert market.is_serving(node_op, registered_model)
    assert market.serve_price(node_op, registered_model) == PRICE
    assert market.is_eligible(node_op, registered_model)
    [log] = tx.decode_logs(market.ModelServed)
    assert (log.node, bytes(log.model_id), log.price_per_token) == (node_op, MODEL_ID, PRICE)
    # a draw candidate only for draws requested after the block it joined in
    joined = tx.block_number
    assert market.draw_candidates(registered_model, joined, MIN_STAKE) == []
    assert market.draw_candidates(registered_model, joined + 1, MIN_STAKE) == [node_op]
    assert market.draw_candidates(registered_model, joined + 1, MIN_STAKE + 1) == []
    market.serve_model(registered_model, 2 * PRICE, sender=node_op)  # price update
    assert market.model_nodes(registered_model) == [node_op]
    assert market.serve_price(node_op, registered_model) == 2 * PRICE
    assert market.draw_candidates(registered_model, joined + 1, MIN_STAKE) == [node_op]


def test_serve_model__without_min_stake__reverts(market, fund, node_op, registered_model):
    """High (issue 11): zero-stake fillers cannot take the 64 slots of an active set."""
    market.register_node(PUBKEY, "", sender=node_op)
    with ape.reverts("market: stake too low"):
        market.serve_model(registered_model, PRICE, sender=node_op)
    fund(node_op, MIN_STAKE)
    market.stake(MIN_STAKE - 1, sender=node_op)
    with ape.reverts("market: stake too low"):
        market.serve_model(registered_model, PRICE, sender=node_op)
    assert market.model_nodes(registered_model) == []


def test_unbond__below_min_stake__leaves_every_active_set(
    market, make_node, node_op, registered_model
):
    make_node(node_op, stake=2 * MIN_STAKE)
    market.unbond(MIN_STAKE, sender=node_op)  # exactly the minimum left: stays
    assert market.is_serving(node_op, registered_model)
    tx = market.unbond(1, sender=node_op)
    assert not market.is_serving(node_op, registered_model)
    assert market.model_nodes(registered_model) == []
    [log] = tx.decode_logs(market.ModelUnserved)
    assert (log.node, bytes(log.model_id)) == (node_op, MODEL_ID)


def test_remove_node__below_raised_min_stake__anyone_removes_it(
    market, make_node, node_op, verifiers, registered_model, owner, keeper
):
    make_node(node_op, stake=MIN_STAKE)
    rich = make_node(verifiers[0], stake=3 * MIN_STAKE)
    with ape.reverts("market: node stake sufficient"):
        market.remove_node(registered_model, node_op, sender=keeper)
    market.set_param(4, 2 * MIN_STAKE, sender=owner)  # P_MIN_STAKE
    with ape.reverts("market: node stake sufficient"):
        market.remove_node(registered_model, rich, sender=keeper)
    tx = market.remove_node(registered_model, node_op, sender=keeper)
    assert market.model_nodes(registered_model) == [rich]
    [log] = tx.decode_logs(market.ModelUnserved)
    assert log.node == node_op
    with ape.reverts("market: model not served"):
        market.remove_node(registered_model, node_op, sender=keeper)


def test_stake__topping_up_from_below_min__rejoins_draws_from_now(
    market, make_node, fund, node_op, registered_model, owner, chain
):
    """A node below the minimum that tops up after a draw's seed is known is no candidate
    for that draw: its joined block moves to the top-up."""
    make_node(node_op, stake=MIN_STAKE)
    market.set_param(4, 2 * MIN_STAKE, sender=owner)
    request_block = chain.blocks.height + 1
    chain.mine()
    fund(node_op, MIN_STAKE)
    top_up = market.stake(MIN_STAKE, sender=node_op)
    assert market.draw_candidates(registered_model, request_block, 2 * MIN_STAKE) == []
    assert market.draw_candidates(registered_model, top_up.block_number + 1, 2 * MIN_STAKE) == [
        node_op
    ]


def test_serve_model__unknown_model__reverts(market, node_op):
    market.register_node(PUBKEY, "", sender=node_op)
    with ape.reverts("market: unknown model"):
        market.serve_model(keccak(b"nope"), PRICE, sender=node_op)


def test_stop_serving__swaps_out_of_set_and_logs(market, make_node, verifiers, registered_model):
    a, b, c = (make_node(v) for v in verifiers[:3])
    tx = market.stop_serving(registered_model, sender=a)
    assert market.model_nodes(registered_model) == [c, b]
    assert not market.is_serving(a, registered_model)
    [log] = tx.decode_logs(market.ModelUnserved)
    assert (log.node, bytes(log.model_id)) == (a, MODEL_ID)
    market.stop_serving(registered_model, sender=b)
    assert market.model_nodes(registered_model) == [c]


def test_stop_serving__when_not_serving__reverts(market, keeper, registered_model):
    with ape.reverts("market: model not served"):
        market.stop_serving(registered_model, sender=keeper)


def test_is_eligible__when_staked_and_serving__true(market, staked_node, registered_model):
    assert market.is_eligible(staked_node, registered_model)


# ---- balances and withdraw ----
def test_deposit__credits_balance_and_logs(market, token, fund, client):
    fund(client, 10 * UNIT)
    tx = market.deposit(10 * UNIT, sender=client)
    assert market.balance_of(client) == 10 * UNIT
    assert token.balanceOf(market) == 10 * UNIT
    [log] = tx.decode_logs(market.Deposited)
    assert (log.account, log.amount, log.balance) == (client, 10 * UNIT, 10 * UNIT)


def test_deposit__zero__reverts(market, client):
    with ape.reverts("market: zero amount"):
        market.deposit(0, sender=client)


def test_deposit__without_allowance__reverts(market, token, client):
    token.mint(client, UNIT, sender=client)
    with ape.reverts("erc20: insufficient allowance"):
        market.deposit(UNIT, sender=client)


def test_withdraw_deposit__returns_tokens_and_logs(market, token, funded_client):
    before = token.balanceOf(funded_client)
    tx = market.withdraw_deposit(UNIT, sender=funded_client)
    assert market.balance_of(funded_client) == 999 * UNIT
    assert token.balanceOf(funded_client) == before + UNIT
    [log] = tx.decode_logs(market.DepositWithdrawn)
    assert (log.account, log.amount, log.balance) == (funded_client, UNIT, 999 * UNIT)


def test_withdraw_deposit__more_than_balance__reverts(market, funded_client):
    with ape.reverts("market: insufficient balance"):
        market.withdraw_deposit(1_000 * UNIT + 1, sender=funded_client)


def test_withdraw_deposit__zero__reverts(market, funded_client):
    with ape.reverts("market: zero amount"):
        market.withdraw_deposit(0, sender=funded_client)


def test_withdraw_to__pays_credits_to_another_address(market, token, staked_node, keeper, chain):
    """An account whose own transfers are blocked (USDC-style blocklist) directs its credits."""
    market.unbond(MIN_STAKE, sender=staked_node)
    chain.pending_timestamp += market.unbonding_delay() + 1
    market.complete_unbond(sender=staked_node)
    own_before, to_before = token.balanceOf(staked_node), token.balanceOf(keeper)
    with ape.reverts("market: zero recipient"):
        market.withdraw_to(ZERO, sender=staked_node)
    tx = market.withdraw_to(keeper, sender=staked_node)
    assert token.balanceOf(keeper) == to_before + MIN_STAKE
    assert token.balanceOf(staked_node) == own_before
    assert market.claimable(staked_node) == 0
    [log] = tx.decode_logs(market.Withdrawn)
    assert (log.account, log.amount) == (staked_node, MIN_STAKE)
    with ape.reverts("market: nothing to withdraw"):
        market.withdraw_to(keeper, sender=staked_node)


def test_withdraw__of_nothing__reverts(market, keeper):
    with ape.reverts("market: nothing to withdraw"):
        market.withdraw(sender=keeper)


def test_withdraw__pays_claimable_and_logs(market, token, staked_node, chain):
    market.unbond(MIN_STAKE, sender=staked_node)
    chain.pending_timestamp += 7 * 86_400
    market.complete_unbond(sender=staked_node)
    before = token.balanceOf(staked_node)
    tx = market.withdraw(sender=staked_node)
    assert token.balanceOf(staked_node) == before + MIN_STAKE
    assert market.claimable(staked_node) == 0
    [log] = tx.decode_logs(market.Withdrawn)
    assert (log.account, log.amount) == (staked_node, MIN_STAKE)


@pytest.mark.parametrize("kind", ["FeeOnTransferToken", "NoReturnToken"])
def test_deposit__with_odd_tokens__credits_what_arrived(deploy_token, deploy_market, client, kind):
    odd = deploy_token(kind)
    m = deploy_market(odd)
    odd.mint(client, 1_000, sender=client)
    odd.approve(m, 1_000, sender=client)
    m.deposit(1_000, sender=client)
    held = odd.balanceOf(m)
    assert m.balance_of(client) == held
    assert (held < 1_000) if kind == "FeeOnTransferToken" else (held == 1_000)
    m.withdraw_deposit(held, sender=client)
    assert odd.balanceOf(m) == 0
    assert m.balance_of(client) == 0


def test_deploy__zero_token__reverts(project, owner, fee_recipient, chain):
    # ape's deploy path sometimes fails to decode this constructor revert, so the creation
    # is simulated with eth_call and the exact reason read from the node's answer
    code = bytes.fromhex(project.Market.contract_type.deployment_bytecode.bytecode[2:])
    args = abi_encode(["address", "uint256", "address"], [ZERO, MIN_STAKE, fee_recipient.address])
    with pytest.raises(Web3LogicError) as err:
        chain.provider.web3.eth.call({"from": owner.address, "data": code + args})
    assert err.value.message == "execution reverted: market: zero token"


def test_serve_model__price_too_large__reverts(market, node_op, registered_model):
    market.register_node(PUBKEY, "", sender=node_op)
    with ape.reverts("market: price too large"):
        market.serve_model(registered_model, 2**224, sender=node_op)


def test_serve_model__too_many_models__reverts(market, fund, node_op, owner):
    fund(node_op, MIN_STAKE)
    market.register_node(PUBKEY, "", sender=node_op)
    market.stake(MIN_STAKE, sender=node_op)
    for i in range(16):
        tx = market.register_model(f"m{i}", "r", keccak(b"m"), sender=owner)
        [log] = tx.decode_logs(market.ModelRegistered)
        market.serve_model(log.model_id, 1, sender=node_op)
    tx = market.register_model("m16", "r", keccak(b"m"), sender=owner)
    [log] = tx.decode_logs(market.ModelRegistered)
    with ape.reverts("market: node serves too many models"):
        market.serve_model(log.model_id, 1, sender=node_op)
