// A real OpenID provider for drawbridge's integration tests: oidc-provider (a certified
// implementation) with the device authorization grant (RFC 8628).
//
//   node server.mjs PORT [DEVICE_CODE_TTL_SECONDS] [INTERVAL_SECONDS]
//
// Issuer http://127.0.0.1:PORT, a public client `drawbridge` allowed the device grant (and
// a confidential one, `drawbridge-confidential`, secret `idp-test-client-secret-4f1c9a`),
// ID tokens signed RS256 with a key made at start, claims `sub`, `email`, `groups`.
// The "browser" part is plain HTML forms a test drives over HTTP:
//   GET  /device?user_code=CODE       -> a form (id op.deviceConfirmForm) with hidden xsrf
//   POST /device  xsrf, user_code, confirm=yes (or abort=yes: the person refuses)
//   GET  /interaction/UID              -> a login form
//   POST /interaction/UID/login  login=alice&groups=ops,dev   (no password: a test IdP)
//   POST /interaction/UID/abort        -> access_denied
// Prints "idp: listening on http://127.0.0.1:PORT" once it serves.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const deviceTtl = Number(process.argv[3] || 600);
const interval = Number(process.argv[4] || 5);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node server.mjs PORT [DEVICE_CODE_TTL_SECONDS] [INTERVAL_SECONDS]');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };

// Groups each account said at the login form.
const groupsOf = new Map();

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'drawbridge',
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code'],
    response_types: [],
    redirect_uris: [],
    id_token_signed_response_alg: 'RS256',
  }, {
    // A confidential client: its secret comes with HTTP Basic.
    client_id: 'drawbridge-confidential',
    client_secret: 'idp-test-client-secret-4f1c9a',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code'],
    response_types: [],
    redirect_uris: [],
    id_token_signed_response_alg: 'RS256',
  }],
  jwks: { keys: [jwk] },
  scopes: ['openid', 'email', 'groups'],
  claims: { openid: ['sub'], email: ['email'], groups: ['groups'] },
  conformIdTokenClaims: false,
  ttl: { DeviceCode: deviceTtl, IdToken: 600, AccessToken: 600 },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: {
      enabled: true,
      charset: 'base-20',
      mask: '****-****',
      userCodeInputSource: async (ctx, form, out, err) => {
        const said = err ? `<p>error ${esc(err.name)}</p>` : '';
        ctx.body = `<!DOCTYPE html><html><body>${said}${form}</body></html>`;
      },
      userCodeConfirmSource: async (ctx, form, client, deviceInfo, userCode) => {
        ctx.body = `<!DOCTYPE html><html><body><p>code ${esc(userCode)}</p>${form}</body></html>`;
      },
      successSource: async (ctx) => {
        ctx.body = '<!DOCTYPE html><html><body>device login success</body></html>';
      },
    },
  },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.org`, groups: groupsOf.get(id) || [] }),
  }),
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><body>error ${esc(out.error)}: ${esc(out.error_description || '')}</body></html>`;
  },
});

async function formBody(ctx) {
  let text = '';
  for await (const chunk of ctx.req) {
    text += chunk;
    if (text.length > 65536) break;
  }
  return new URLSearchParams(text);
}

// The interaction pages (login; consent is granted at once for this first-party client),
// and an `interval` in the device authorization response.
provider.use(async (ctx, next) => {
  const m = ctx.path.match(/^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|abort))?$/);
  if (!m) {
    await next();
    if (ctx.path === '/device/auth' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      ctx.body = { ...ctx.body, interval };
    }
    return;
  }
  const [, uid, action] = m;
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (ctx.method === 'GET' && !action) {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><body>
<form method="post" action="/interaction/${esc(uid)}/login"><input name="login"><input name="groups"></form>
<form method="post" action="/interaction/${esc(uid)}/abort"></form></body></html>`;
    return;
  }
  if (ctx.method !== 'POST') {
    ctx.status = 405;
    return;
  }
  let result;
  if (action === 'abort') {
    result = { error: 'access_denied', error_description: 'the person refused' };
  } else {
    const form = await formBody(ctx);
    const login = form.get('login');
    if (!login) {
      ctx.status = 400;
      ctx.body = 'login missing';
      return;
    }
    groupsOf.set(login, (form.get('groups') || '').split(',').filter(Boolean));
    const grant = new provider.Grant({ accountId: login, clientId: details.params.client_id });
    grant.addOIDCScope(details.params.scope || 'openid');
    const grantId = await grant.save();
    result = { login: { accountId: login }, consent: { grantId } };
  }
  const to = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
  ctx.redirect(to);
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`idp: listening on ${issuer}`);
});
