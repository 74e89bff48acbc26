"""Reports: data model, Plotly figures, Jinja templates, publishing, email."""
