"""The district server: change log, publisher, enrolment, certificates, fleet, reports."""
