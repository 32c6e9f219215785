"""Classification: the facts of a letter, the rules of rules.yaml, and the decision with its trace."""
