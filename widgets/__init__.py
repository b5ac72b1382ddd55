"""ipywidgets explorers: controls -> labkit -> plotly FigureWidget, updated in place."""
