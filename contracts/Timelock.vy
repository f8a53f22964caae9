# pragma version ~=0.4.3
# pragma optimize codesize
"""
@title verinfer parameter timelock
@license GNU Affero General Public License v3.0 or later
@notice Owns the market and the court in a deployment (`verinfer deploy`), so that every
        parameter change (`set_param`, `set_fee_recipient`, ownership) is scheduled in
        public and applies only after `get_minimum_delay` seconds: users see it coming and
        can leave first. snekmate's timelock controller, unchanged.
"""

from snekmate.auth import access_control
from snekmate.governance import timelock_controller

initializes: access_control
initializes: timelock_controller[access_control := access_control]

exports: timelock_controller.__interface__


@deploy
@payable
def __init__(
    minimum_delay_: uint256,
    proposers_: DynArray[address, timelock_controller._DYNARRAY_BOUND],
    executors_: DynArray[address, timelock_controller._DYNARRAY_BOUND],
    admin_: address,
):
    """
    @notice Deploys the timelock.
    @param minimum_delay_ Seconds between scheduling a change and its earliest execution.
    @param proposers_ Accounts that may schedule (and cancel) changes.
    @param executors_ Accounts that may execute ready changes (empty address: anyone).
    @param admin_ Optional admin for the initial set-up (empty: none).
    """
    access_control.__init__()
    timelock_controller.__init__(minimum_delay_, proposers_, executors_, admin_)
