//! Every `piku <command>`: the dispatch table and the shared argument helpers.
