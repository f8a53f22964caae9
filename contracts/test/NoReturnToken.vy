# pragma version ~=0.4.3
"""
@title verinfer no-return-value test token
@license GNU Affero General Public License v3.0 or later
@notice An ERC20 (snekmate's `erc20` module) whose `transfer`, `transferFrom` and
        `approve` return nothing, like USDT on Ethereum mainnet. Failures revert.
        Open `mint`; tests only.
"""

from snekmate.auth import ownable
from snekmate.tokens import erc20

initializes: ownable
initializes: erc20[ownable := ownable]

exports: (
    erc20.balanceOf,
    erc20.allowance,
    erc20.totalSupply,
    erc20.name,
    erc20.symbol,
    erc20.decimals,
)


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
def transfer(to: address, amount: uint256):
    """
    @notice Sends `amount` from the caller to `to`; returns no value.
    @param to The receiver.
    @param amount The amount.
    """
    erc20._transfer(msg.sender, to, amount)


@external
def transferFrom(owner: address, to: address, amount: uint256):
    """
    @notice Sends `amount` from `owner` to `to` using the caller's allowance; returns
            no value.
    @param owner The account debited.
    @param to The receiver.
    @param amount The amount.
    """
    erc20._spend_allowance(owner, msg.sender, amount)
    erc20._transfer(owner, to, amount)


@external
def approve(spender: address, amount: uint256):
    """
    @notice Lets `spender` move up to `amount` of the caller's tokens; returns no value.
    @param spender The spender.
    @param amount The allowance.
    """
    erc20._approve(msg.sender, spender, amount)


@external
def mint(to: address, amount: uint256):
    """
    @notice Mints `amount` tokens to `to`; anyone may call it (tests only).
    @param to The receiver of the new tokens.
    @param amount The amount to mint.
    """
    erc20._mint(to, amount)
