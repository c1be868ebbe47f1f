-- A campaign's own rate_per_sec, shared by every instance sending it (sender.campaign_share).
--
-- The rate is cut into units: floor(rate) sends in any one-second window (below 1/s, one send per
-- 1/rate seconds: one unit). Each instance holds some units, enforces exactly that many in any
-- window at the wire (sender.ratelimit.CampaignWindow) and renews its hold every second; the units
-- of all instances never add up to more than the rate's, so no window across the cluster holds more
-- than the rate. Units go to the instances that want them (the ones with rows to send), evenly.
--
-- A unit changes hands only once it has cooled, so no window can see it used twice: its old
-- holder has confirmed it no longer uses it (or its hold ran out: it stops sending half a second
-- before), and then one whole window has passed. A dead instance's units are never reused before.
-- Units its old holder did not use in the last window (it says how many sends it counted there)
-- need no cooling: no window can see them used twice.
DROP TABLE sender_campaign_leases;

CREATE TABLE sender_campaign_shares (
    campaign_id    bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    instance_id    text NOT NULL,
    units          int NOT NULL DEFAULT 0 CHECK (units >= 0),    -- the instance may use these while its hold lasts
    wanted         int NOT NULL DEFAULT 0 CHECK (wanted >= 0),   -- what it asked for (0: it has nothing to send)
    held_until     timestamptz NOT NULL,
    cooling        int NOT NULL DEFAULT 0 CHECK (cooling >= 0),  -- units it gave up, nobody's until cooling_until
    cooling_until  timestamptz,
    PRIMARY KEY (campaign_id, instance_id)
);

-- Renew instance p_instance's hold on campaign p_campaign, whose rate has p_total units; it has
-- enforced at most p_enforcing units since its last answer, counted p_used sends in its last window,
-- and wants p_want. Returns the units it
-- may use from now on, for p_hold seconds. A unit given up, or held by an instance whose hold ran
-- out, is nobody's for p_cool seconds (one window and its margin). Also returns its fair share: while
-- it holds less, it is waiting for units to cool and asks again sooner.
CREATE FUNCTION sender_campaign_share(p_campaign bigint, p_instance text, p_total int, p_enforcing int,
                                      p_used int, p_want int, p_hold float8, p_cool float8)
RETURNS TABLE (granted int, fair int)
LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz;
    cool interval := make_interval(secs => p_cool);
    me sender_campaign_shares%ROWTYPE;
    busy int;
    free int;
    remaining int;
    wanting int;
    target int := 0;
    fair_share int := 0;
    share int;
    r record;
BEGIN
    -- one caller per campaign at a time: a new holder's row is not yet visible to a concurrent one
    PERFORM pg_advisory_xact_lock(hashtextextended('sender_campaign_share', p_campaign));
    t := clock_timestamp();
    DELETE FROM sender_campaign_shares
     WHERE campaign_id = p_campaign AND instance_id <> p_instance
       AND held_until + cool < t AND (cooling_until IS NULL OR cooling_until < t);

    SELECT * INTO me FROM sender_campaign_shares WHERE campaign_id = p_campaign AND instance_id = p_instance;
    IF NOT FOUND THEN
        INSERT INTO sender_campaign_shares (campaign_id, instance_id, held_until) VALUES (p_campaign, p_instance, t)
        RETURNING * INTO me;
    END IF;
    IF me.cooling_until IS NULL OR me.cooling_until < t THEN
        me.cooling := 0;
    END IF;
    IF p_enforcing < me.units THEN  -- we gave units up, or our hold ran out
        -- the ones we used in the last window cool from now; the others are free at once
        IF p_used > p_enforcing THEN
            me.cooling := me.cooling + least(me.units, p_used) - greatest(p_enforcing, 0);
            me.cooling_until := t + cool;
        END IF;
        me.units := greatest(p_enforcing, 0);
    END IF;

    SELECT coalesce(sum(CASE WHEN held_until + cool > t THEN units ELSE 0 END
                        + CASE WHEN cooling_until > t THEN cooling ELSE 0 END), 0)
      INTO busy
      FROM sender_campaign_shares WHERE campaign_id = p_campaign AND instance_id <> p_instance;
    free := p_total - busy - me.cooling - me.units;

    -- Fair shares among the live instances that want units: the smallest wants first, each taking
    -- at most an even split of what is left; ties go to the bigger holder (no churn), then by name.
    IF p_want > 0 THEN
        remaining := p_total;
        SELECT count(*) + 1 INTO wanting FROM sender_campaign_shares
         WHERE campaign_id = p_campaign AND instance_id <> p_instance AND held_until > t AND wanted > 0;
        FOR r IN SELECT instance_id, wanted FROM (
                     SELECT instance_id, wanted, units FROM sender_campaign_shares
                      WHERE campaign_id = p_campaign AND instance_id <> p_instance AND held_until > t AND wanted > 0
                     UNION ALL SELECT p_instance, p_want, me.units) w
                  ORDER BY wanted, units DESC, instance_id LOOP
            share := least(r.wanted, ceil(remaining::numeric / greatest(wanting, 1))::int);
            IF r.instance_id = p_instance THEN
                target := share;
                EXIT;
            END IF;
            remaining := remaining - share;
            wanting := wanting - 1;
        END LOOP;
    END IF;

    fair_share := target;
    IF target > me.units THEN  -- grow by what is free now
        me.units := me.units + least(target - me.units, greatest(free, 0));
        target := me.units;
    ELSE  -- a shrink: recorded once we say we enforce it (p_enforcing, next time); never more than fits
        -- beside what the others still hold (after the rate dropped, they may hold more than it has)
        target := greatest(least(target, me.units + free), 0);
    END IF;
    me.wanted := greatest(p_want, 0);
    me.held_until := t + make_interval(secs => p_hold);
    UPDATE sender_campaign_shares
       SET units = me.units, wanted = me.wanted, held_until = me.held_until, cooling = me.cooling,
           cooling_until = me.cooling_until
     WHERE campaign_id = p_campaign AND instance_id = p_instance;
    RETURN QUERY SELECT target, fair_share;
END
$$;
