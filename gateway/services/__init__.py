"""What a person may do to a letter and see of it: one layer under the CLI, the web register and
answers by e-mail alike. Each operation reads what it needs, composes the mail it causes, and
hands the registry a plan to apply in one transaction (no rule, file or template work while
the registry's write lock is held)."""
