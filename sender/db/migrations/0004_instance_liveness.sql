-- Liveness per instance instead of per-row lease renewal, and materialisation off the tick.
--
-- A claimed row stays valid while its owner's heartbeat (sender_instances) is fresh, up to the
-- hard bound in lease_until set once at claim time; nothing rewrites held rows while they wait.
-- Recipients are materialised in keyset chunks of contacts; the cursor survives a crash, and a
-- campaign is complete only once materialised_at is set.
ALTER TABLE campaigns
    ADD COLUMN materialise_cursor bigint NOT NULL DEFAULT 0,
    ADD COLUMN materialising_by   text,
    ADD COLUMN materialised_at    timestamptz;

UPDATE campaigns SET materialised_at = coalesce(started_at, now())
 WHERE status NOT IN ('draft', 'queued');

CREATE INDEX campaigns_materialising_idx ON campaigns (id)
    WHERE materialised_at IS NULL AND status IN ('sending', 'paused');
