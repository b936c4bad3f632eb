"""Static files served by the admin API (the ring page, ring.html)."""
