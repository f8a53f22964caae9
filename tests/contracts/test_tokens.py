"""The test tokens behave as their names say: plain, fee-on-transfer, no return value."""

import ape
import pytest
from eth_abi import decode

ZERO_ADDRESS = "0x" + "00" * 20

SUPPLY = 10**24


@pytest.fixture(scope="module")
def holder(accounts):
    return accounts[7]


@pytest.fixture(scope="module")
def receiver(accounts):
    return accounts[8]


@pytest.fixture(scope="module")
def spender(accounts):
    return accounts[9]


def _deploy(project, holder, name: str):
    token = getattr(project, name).deploy("Test Token", "TT", 18, sender=holder)
    token.mint(holder, SUPPLY, sender=holder)
    return token


@pytest.fixture(scope="module")
def test_token(project, holder):
    return _deploy(project, holder, "TestToken")


@pytest.fixture(scope="module")
def fee_token(project, holder):
    return _deploy(project, holder, "FeeOnTransferToken")


@pytest.fixture(scope="module")
def no_return_token(project, holder):
    return _deploy(project, holder, "NoReturnToken")


def test_mint__by_anyone__credits_receiver_and_logs_transfer(test_token, receiver, spender):
    supply = test_token.totalSupply()
    tx = test_token.mint(receiver, 123, sender=spender)
    assert test_token.balanceOf(receiver) == 123
    assert test_token.totalSupply() == supply + 123
    [log] = tx.decode_logs(test_token.Transfer)
    assert (log.sender, log.receiver, log.value) == (ZERO_ADDRESS, receiver, 123)


def test_metadata__is_set_by_constructor(test_token):
    assert (test_token.name(), test_token.symbol(), test_token.decimals()) == (
        "Test Token",
        "TT",
        18,
    )


def test_transfer__moves_full_amount_and_returns_true(test_token, holder, receiver):
    before = test_token.balanceOf(receiver)
    tx = test_token.transfer(receiver, 1_000, sender=holder)
    assert tx.return_value is True
    assert test_token.balanceOf(receiver) == before + 1_000
    [log] = tx.decode_logs(test_token.Transfer)
    assert (log.sender, log.receiver, log.value) == (holder, receiver, 1_000)


def test_transfer__more_than_balance__reverts(test_token, spender, receiver):
    with ape.reverts("erc20: transfer amount exceeds balance"):
        test_token.transfer(receiver, 1, sender=spender)


def test_transfer_from__without_allowance__reverts(test_token, holder, spender):
    with ape.reverts("erc20: insufficient allowance"):
        test_token.transferFrom(holder, spender, 1, sender=spender)


def test_fee_token__transfer__burns_one_percent(fee_token, holder, receiver):
    assert fee_token.FEE_BPS() == 100
    holder_before, supply_before = fee_token.balanceOf(holder), fee_token.totalSupply()
    tx = fee_token.transfer(receiver, 10_000, sender=holder)
    assert fee_token.balanceOf(holder) == holder_before - 10_000
    assert fee_token.balanceOf(receiver) == 9_900
    assert fee_token.totalSupply() == supply_before - 100
    logs = tx.decode_logs(fee_token.Transfer)
    assert [(log.sender, log.receiver, log.value) for log in logs] == [
        (holder, receiver, 9_900),
        (holder, ZERO_ADDRESS, 100),
    ]


def test_fee_token__transfer_from__spends_full_allowance_delivers_less(
    fee_token, holder, receiver, spender
):
    fee_token.approve(spender, 5_000, sender=holder)
    before = fee_token.balanceOf(receiver)
    fee_token.transferFrom(holder, receiver, 5_000, sender=spender)
    assert fee_token.allowance(holder, spender) == 0
    assert fee_token.balanceOf(receiver) == before + 4_950


def test_fee_token__transfer_from__over_allowance__reverts(fee_token, holder, spender):
    with ape.reverts("erc20: insufficient allowance"):
        fee_token.transferFrom(holder, spender, 1, sender=spender)


def test_no_return_token__abi_has_no_outputs(no_return_token):
    abi = {item.name: item for item in no_return_token.contract_type.mutable_methods}
    for name in ("transfer", "transferFrom", "approve"):
        assert abi[name].outputs == []


def test_no_return_token__transfer__returns_empty_data(no_return_token, holder, receiver):
    data = no_return_token.transfer.encode_input(receiver, 77)
    raw = ape.chain.provider.web3.eth.call(
        {"from": holder.address, "to": no_return_token.address, "data": data.hex()}
    )
    assert bytes(raw) == b""
    tx = no_return_token.transfer(receiver, 77, sender=holder)
    assert no_return_token.balanceOf(receiver) == 77
    [log] = tx.decode_logs(no_return_token.Transfer)
    assert (log.sender, log.receiver, log.value) == (holder, receiver, 77)


def test_no_return_token__approve_and_transfer_from__move_tokens(
    no_return_token, holder, receiver, spender
):
    tx = no_return_token.approve(spender, 500, sender=holder)
    [log] = tx.decode_logs(no_return_token.Approval)
    assert (log.owner, log.spender, log.value) == (holder, spender, 500)
    before = no_return_token.balanceOf(receiver)
    no_return_token.transferFrom(holder, receiver, 300, sender=spender)
    assert no_return_token.balanceOf(receiver) == before + 300
    assert no_return_token.allowance(holder, spender) == 200


def test_no_return_token__failed_transfer__reverts(no_return_token, spender, receiver):
    with ape.reverts("erc20: transfer amount exceeds balance"):
        no_return_token.transfer(receiver, 1, sender=spender)


def test_test_token__transfer__returns_abi_true(test_token, holder, receiver):
    data = test_token.transfer.encode_input(receiver, 1)
    raw = ape.chain.provider.web3.eth.call(
        {"from": holder.address, "to": test_token.address, "data": data.hex()}
    )
    assert decode(["bool"], bytes(raw)) == (True,)
