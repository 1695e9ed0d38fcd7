-- Webhook subscriptions: the receiver's URL on the subscription row (NULL for pull-wake).
-- The full configuration stays in config_json; this column lets the delivery loop find the
-- webhook subscriptions with a wake in flight without reading every configuration.
-- (Webhook subscriptions have no wake stream: their wake_stream column holds ''.)

ALTER TABLE subscriptions ADD COLUMN webhook_url TEXT;

CREATE INDEX subscriptions_woken_webhooks ON subscriptions (id)
    WHERE webhook_url IS NOT NULL AND wake_id IS NOT NULL AND holder IS NULL;
