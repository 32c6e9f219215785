"""The stages between intake and the registry: normalise, check, classify, route. Each turns
an item into a plan (the letter, its events, its outbox mails) as plain data; none writes."""
