"""The lookup session: tracking, quality gate, liveness, decision, events and audit."""
