package db

// PruneProcessedSQL is the prune statement, for the test of its plan.
const PruneProcessedSQL = pruneProcessed

// Redact is redact, for the table test of the password forms it hides.
var Redact = redact

// SecretForms is secretForms, for the same test.
var SecretForms = secretForms
