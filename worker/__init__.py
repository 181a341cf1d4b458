"""The sending side of Onward: RQ jobs and the periodic tick."""
