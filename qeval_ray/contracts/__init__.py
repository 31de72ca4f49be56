"""What stages and users share: columns, statuses and provenance fields; the output layout."""
