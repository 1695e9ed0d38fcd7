"""The anyio effect layer: the chart actor and the pull-wake runner."""
