"""The tests' broker: the project's one local Mosquitto (:mod:`sync.localbroker`)."""

from sync.localbroker import MosquittoBroker, PortReservation, TlsFiles, free_port

__all__ = ["MosquittoBroker", "PortReservation", "TlsFiles", "free_port"]
