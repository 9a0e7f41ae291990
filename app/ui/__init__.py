"""The desktop front end (PySide6): tray icon, dialogs and windows over :class:`app.agent.Agent`.

Only :mod:`app.ui.menu_model` is free of Qt. Nothing in this package imports torch: the
volunteer computes in a separate process, so the tray starts in well under a second.
"""
