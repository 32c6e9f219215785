"""The monthly archive: packages in standard formats, a manifest each, verification, retention."""
