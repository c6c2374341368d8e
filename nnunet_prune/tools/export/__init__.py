"""Slim and runtime exports of model folders: load -> transform -> write -> verify (:mod:`.folder`), the weight
transforms (:mod:`.transforms`), one writer per runtime (:mod:`.writers`)."""
