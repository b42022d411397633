"""The admin's ``fl-server``: the Rich menu (``menu``, ``dialogs``), the matching subcommands
(``commands``, ``cli``), and what both print (``views``, ``statistics``, ``monitor``).

Owns no state: every action is a plain function in ``actions`` over the store and the session
manager, so the menu, the subcommands and the tests run the same code. May import everything
below it (history, sessions, socket, store, shared).
"""
