"""credflow: the Dagster code location for a therapist-credentialing operation's file flows."""
