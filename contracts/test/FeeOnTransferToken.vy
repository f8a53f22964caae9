# pragma version ~=0.4.3
"""
@title verinfer fee-on-transfer test token
@license GNU Affero General Public License v3.0 or later
@notice An ERC20 (snekmate's `erc20` module) that burns `FEE_BPS` of every transfer, so
        the receiver gets less than the amount sent. It exercises the market's
        balance-difference accounting of incoming tokens. Open `mint`; tests only.
"""

from ethereum.ercs import IERC20

implements: IERC20

from snekmate.auth import ownable
from snekmate.tokens import erc20

initializes: ownable
initializes: erc20[ownable := ownable]

exports: (
    erc20.approve,
    erc20.balanceOf,
    erc20.allowance,
    erc20.totalSupply,
    erc20.name,
    erc20.symbol,
    erc20.decimals,
)

# @notice The share of every transfer that is burnt, in basis points (1 %).
FEE_BPS: public(constant(uint256)) = 100
_MAX_BPS: constant(uint256) = 10_000


@deploy
def __init__(name_: String[25], symbol_: String[5], decimals_: uint8):
    """
    @notice Deploys the token with the given metadata and no supply.
    @param name_ The token name (at most 25 characters).
    @param symbol_ The token symbol (at most 5 characters).
    @param decimals_ The number of decimals.
    """
    ownable.__init__()
    erc20.__init__(name_, symbol_, decimals_, name_, "1")


@external
def transfer(to: address, amount: uint256) -> bool:
    """
    @notice Sends `amount` from the caller; `to` receives it less the burnt fee.
    @param to The receiver.
    @param amount The amount debited from the caller.
    @return Always True (reverts on failure).
    """
    self._transfer_with_fee(msg.sender, to, amount)
    return True


@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    """
    @notice Sends `amount` from `owner` using the caller's allowance; `to` receives it
            less the burnt fee.
    @param owner The account debited.
    @param to The receiver.
    @param amount The amount debited from `owner` and taken from the allowance.
    @return Always True (reverts on failure).
    """
    erc20._spend_allowance(owner, msg.sender, amount)
    self._transfer_with_fee(owner, to, amount)
    return True


@external
def mint(to: address, amount: uint256):
    """
    @notice Mints `amount` tokens to `to` without fee; anyone may call it (tests only).
    @param to The receiver of the new tokens.
    @param amount The amount to mint.
    """
    erc20._mint(to, amount)


@internal
def _transfer_with_fee(owner: address, to: address, amount: uint256):
    fee: uint256 = amount * FEE_BPS // _MAX_BPS
    erc20._transfer(owner, to, amount - fee)
    if fee != 0:
        erc20._burn(owner, fee)
