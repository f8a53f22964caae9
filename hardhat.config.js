// Hardhat v2 local node for verinfer: `npx hardhat node` (chain id 31337, port 8545);
// `make demo CHAIN=hardhat` starts `hardhat node --config hardhat.config.js` on a free port
// (verinfer.node.devchain.start_hardhat). Its default accounts come from the same test
// mnemonic as ape's test accounts.
module.exports = {
  networks: {
    hardhat: {
      chainId: 31337,
      hardfork: "prague", // Vyper 0.4.3's default target, as ape-config.yaml sets for ape-hardhat
      // ape sends local transactions with the block gas limit; keep it at the
      // per-transaction cap (EIP-7825, 2**24) so they are accepted.
      blockGasLimit: 16777216,
      accounts: {
        mnemonic: "test test test test test test test test test test test junk",
        count: 10,
      },
    },
  },
};
