-- A connector's own principal (role connector, subject connector:<name>) pushes its results.
ALTER TABLE principals DROP CONSTRAINT principals_role_check;
ALTER TABLE principals ADD CONSTRAINT principals_role_check
    CHECK (role IN ('requester', 'cab_approver', 'deployer', 'auditor', 'admin', 'connector'));
