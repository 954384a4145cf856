-- The numeric part of a customer code: at least six digits, never truncated (lpad alone cuts
-- longer values, which would repeat codes once the sequence passes 999999).
CREATE FUNCTION customer_code_suffix(n bigint) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT lpad(n::text, greatest(6, length(n::text)), '0') $$;
