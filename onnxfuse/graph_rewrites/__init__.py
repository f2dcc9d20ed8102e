"""graph_rewrites: see DESIGN.md."""
