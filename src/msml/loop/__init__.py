"""The closed loop: served rows and their ground truth kept under the contract (store), joined into versioned
training snapshots (collect), and the retraining an alert starts, with its guards, gate, promotion and rollback."""
