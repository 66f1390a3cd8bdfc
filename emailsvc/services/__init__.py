"""State changes of the sending side, one module per business action.

Views, tasks, admin actions and management commands call these functions and
nothing else writes these tables; status columns are written only through
`emailsvc.status`.
"""
