//! `piku`: the forced command sshd runs for every push and every `ssh piku@host <cmd>`.
mod commands;
mod daemon;
mod deploy;
mod output;

fn main() {}
