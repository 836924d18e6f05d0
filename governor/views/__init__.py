"""What people look at: reports (table, JSON, CSV, HTML) and ``governor top``."""
