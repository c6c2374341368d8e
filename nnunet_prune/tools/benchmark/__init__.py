"""Every method on the user's data through stock nnU-Net (:mod:`.benchmark`), and the demo (:mod:`.demo`,
:mod:`.progress`)."""
