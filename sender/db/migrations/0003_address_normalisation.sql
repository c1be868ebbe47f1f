-- Recipients are unique per campaign on the normalised address (sender.addresses folds the same way):
-- surrounding whitespace trimmed, compatibility forms (fullwidth letters and at sign) folded by NFKC, case
-- ignored. ' ann@example.org' and fullwidth 'ANN@example.org' are one recipient, not two.
-- ASCII addresses (nearly all) skip normalize(): NFKC leaves ASCII unchanged, and it costs ~2 µs a row.
CREATE FUNCTION sender_address_key(email text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN lower(btrim(CASE WHEN octet_length(email) = length(email) THEN email ELSE normalize(email, NFKC) END,
                       U&' \0009\000A\000B\000C\000D\001C\001D\001E\001F\0085\1680\2028\2029'));

-- Copies made before this migration that the new key merges: a copy still pending was never sent,
-- so it goes when another copy was already handled or came first (it is exactly the duplicate this
-- migration exists to prevent).
DELETE FROM campaign_recipients r
 USING campaign_recipients other
 WHERE r.status = 'pending'
   AND other.campaign_id = r.campaign_id
   AND other.id <> r.id
   AND sender_address_key(other.email) = sender_address_key(r.email)
   AND (other.status <> 'pending' OR other.id < r.id);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM campaign_recipients
                GROUP BY campaign_id, sender_address_key(email) HAVING count(*) > 1) THEN
        RAISE EXCEPTION 'campaign_recipients holds finished rows that are the same address once normalised; '
                        'remove the extra copies (SELECT campaign_id, sender_address_key(email) ... '
                        'GROUP BY 1, 2 HAVING count(*) > 1) and migrate again';
    END IF;
END $$;

DROP INDEX campaign_recipients_campaign_email_key;
CREATE UNIQUE INDEX campaign_recipients_campaign_address_key
    ON campaign_recipients (campaign_id, sender_address_key(email));
