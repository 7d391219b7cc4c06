"""Cloud provider drivers: one class per config ``type``, loaded lazily (the SDKs are slow to import)."""

REGISTRY = {
    "aws": "eipfailover.providers.aws:AwsProvider",
    "alibaba": "eipfailover.providers.alibaba:AlibabaProvider",
}
