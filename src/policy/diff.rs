//! `policy diff`: effective access gained and lost between two Git revisions.
