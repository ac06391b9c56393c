//! Device selection (`Detect`): explicit, wildcard, route-based auto-detection, and the
//! direct-routing / IPv6-multicast device.
