"""The staff's ``fl-client``: the hospital menu (``site_menu``) and the matching subcommands
(``commands``, ``cli``), both calling the plain functions in ``actions``; what they print
(``views``, ``training_display``) and local evaluation of a version (``evaluation``).

May import ``federation``, ``training``, ``site_profile`` and ``shared``.
"""
