"""Coordination between the daemons of a group through etcd (leader election, fencing)."""
