"""The secrets of the seed-API stack (tests only)."""

PROVIDER_KEY = "sk-seeds-provider-secret-0123456789"
CLIENT_KEY = "sb-seeds-client-key-0123456789"
ADMIN_KEY = "sb-seeds-admin-key-0123456789"
# Allowed one request per minute.
LIMITED_KEY = "sb-seeds-limited-key-0123456789"
# The Gemini loopback's key: deliberately not shaped like a real Google key
# ("AIza…"), so secret scanners have nothing to flag.
GEMINI_KEY = "gemini-seeds-loopback-test-key-0001"
