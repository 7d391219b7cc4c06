"""Health checks: one class per config ``type``, loaded lazily."""

REGISTRY = {
    "tcp": "eipfailover.checks.tcp:TcpCheck",
    "http": "eipfailover.checks.http:HttpCheck",
    "exec": "eipfailover.checks.exec:ExecCheck",
    "instance": "eipfailover.checks.instance:InstanceCheck",
    "havip": "eipfailover.checks.havip:HaVipCheck",
}
