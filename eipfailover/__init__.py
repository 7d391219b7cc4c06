"""eipfailover: a high-availability failover daemon for cloud Elastic IPs."""

__version__ = "0.1.0"
