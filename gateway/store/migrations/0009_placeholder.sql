-- A placeholder for the migration another branch adds as 0009: it keeps the numbering
-- gapless on this branch and is replaced by that migration on merge.
SELECT 1;
