// TEST-ONLY injected EIP-1193 provider: stands in for a browser wallet (MetaMask, Rabby,
// Frame…) in tests/web. It answers as the wallet of one Anvil dev account and forwards every
// other request to the dev chain, where Anvil signs eth_sendTransaction with that account's
// dev key (its unlocked test accounts). Never shipped with the page.
// Set before it runs: window.__VERINFER_TEST_WALLET__ = {rpcUrl, account, chainId?}.
// window.__VERINFER_TEST_WALLET__.reject = true makes it refuse signatures (code 4001) as a
// person pressing "Reject" would.
(() => {
  const cfg = window.__VERINFER_TEST_WALLET__;
  let id = 0;
  const listeners = {};
  async function forward(method, params) {
    const res = await fetch(cfg.rpcUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: ++id, method, params: params || [] }),
    });
    const body = await res.json();
    if (body.error) {
      const err = new Error(body.error.message);
      err.code = body.error.code;
      err.data = body.error.data;
      throw err;
    }
    return body.result;
  }
  window.ethereum = {
    isVerinferTestProvider: true,
    async request({ method, params }) {
      if (method === "eth_requestAccounts" || method === "eth_accounts") return [cfg.account];
      if (method === "eth_chainId" && cfg.chainId) return `0x${cfg.chainId.toString(16)}`;
      if (method === "wallet_switchEthereumChain") {
        cfg.chainId = parseInt(params[0].chainId, 16);
        (listeners.chainChanged || []).forEach((f) => f(params[0].chainId));
        return null;
      }
      if (cfg.reject && (method === "eth_sendTransaction" || method.startsWith("eth_sign"))) {
        const err = new Error("User rejected the request.");
        err.code = 4001;
        throw err;
      }
      return forward(method, params);
    },
    on(event, fn) { (listeners[event] = listeners[event] || []).push(fn); },
    removeListener(event, fn) { listeners[event] = (listeners[event] || []).filter((f) => f !== fn); },
  };
})();
