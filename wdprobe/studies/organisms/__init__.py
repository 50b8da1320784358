"""Model organisms: copies of a model trained to a planted word-deed relation, so the instruments can be scored on a
truth known by construction (issue 17)."""
