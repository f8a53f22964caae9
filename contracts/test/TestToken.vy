# pragma version ~=0.4.3
"""
@title verinfer test token
@license GNU Affero General Public License v3.0 or later
@notice A plain ERC20 (snekmate's `erc20` module) with an open `mint` so that tests,
        local deployments and benchmarks can fund any account. Never deploy it where
        the token must have value.
"""

from ethereum.ercs import IERC20

implements: IERC20

from snekmate.auth import ownable
from snekmate.tokens import erc20

initializes: ownable
initializes: erc20[ownable := ownable]

exports: (
    erc20.IERC20,
    erc20.name,
    erc20.symbol,
    erc20.decimals,
    erc20.burn,
    erc20.burn_from,
    erc20.permit,
    erc20.nonces,
    erc20.DOMAIN_SEPARATOR,
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
def mint(to: address, amount: uint256):
    """
    @notice Mints `amount` tokens to `to`; anyone may call it (test token only).
    @param to The receiver of the new tokens.
    @param amount The amount to mint.
    """
    erc20._mint(to, amount)
