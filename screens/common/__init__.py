"""What several modes share: widgets and dialogs, forms, charts, panes, the RunsScreen base of the
run modes, and the running server as the screens see it (serving, mounting)."""
